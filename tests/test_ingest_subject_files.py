"""``fmgnn ingest matrices`` and ``fmgnn ingest series``: per-subject files joined to a phenotype table.

The two commands of the issue run as written, from a project folder beside ``shared/`` (the layout of a
checkout), on ABIDE's real files; small folders built here drive each kind of bad input.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from fmgnn.atlas import AAL116, get_atlas
from fmgnn.cohort import Cohort, CohortError
from fmgnn.sources.matrices import MatricesConfig, ingest_matrices
from fmgnn.sources.series import SeriesConfig, ingest_series
from fmgnn.sources.subject_files import ids_in_name
from tests.conftest import SHARED_DATA

ABIDE_COMMAND = ("fmgnn ingest matrices ../shared/data/abide_aal116/matrices -o cohorts/abide.parquet "
                 "participants=../shared/data/abide_aal116/Phenotypic_V1_0b_preprocessed1.csv id_column=SUB_ID "
                 "label_column=DX_GROUP site_column=SITE_ID atlas=AAL116")
NYU_COMMAND = ("fmgnn ingest series ../shared/data/abide_nyu_cc200/rois_cc200 -o cohorts/nyu.parquet "
               "participants=../shared/data/abide_aal116/Phenotypic_V1_0b_preprocessed1.csv id_column=FILE_ID "
               "label_column=DX_GROUP site_column=SITE_ID atlas=CC200")


@pytest.fixture
def beside_shared(tmp_path):
    """A project folder with ``../shared`` beside it, as in a checkout."""
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def run_as_written(command: str, cwd) -> subprocess.CompletedProcess:
    """The installed ``fmgnn`` script, the one a user types."""
    args = command.split()
    script = Path(sys.executable).parent / args[0]
    return subprocess.run([str(script), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_abide_matrices_command_as_written(beside_shared):
    done = run_as_written(ABIDE_COMMAND, beside_shared)
    assert done.returncode == 0, done.stderr
    assert "989 subjects, one scan each (control: 534, autism: 455)" in done.stdout
    cohort = Cohort(beside_shared / "cohorts" / "abide.parquet")
    assert (len(cohort), cohort.n_rois, len(set(cohort.sites()))) == (989, 116, 18)
    assert cohort.metadata.name == "abide"  # the output's name, not the folder's (matrices)
    assert cohort.metadata.atlas == "AAL-116" and cohort.metadata.roi_names == AAL116.roi_names
    assert cohort.metadata.networks["cerebellum"] == list(range(90, 116))
    row = cohort.subject_ids().tolist().index("50002")  # PITT, autism, 16.77 years, male
    assert cohort.labels()[row] == 1 and cohort.sites()[row] == "PITT"
    assert cohort.table.column("age")[row].as_py() == pytest.approx(16.77)
    assert cohort.table.column("sex")[row].as_py() == "M"
    # The stored triangle is the file's: one subject's matrix read back against scipy's reading.
    from scipy.io import loadmat

    path = next((SHARED_DATA / "abide_aal116" / "matrices").rglob("sub-*50002_*.mat"))
    np.testing.assert_allclose(cohort.fc([row])[0], loadmat(path)["data"], atol=1e-6)


@pytest.mark.slow
def test_nyu_series_command_as_written(beside_shared):
    done = run_as_written(NYU_COMMAND, beside_shared)
    assert done.returncode == 0, done.stderr
    assert "175 subjects, one scan each" in done.stdout
    assert "NYU_0051062: CC200_043; NYU_0051118: CC200_043" in done.stdout  # the two constant regions, named
    cohort = Cohort(beside_shared / "cohorts" / "nyu.parquet")
    assert (len(cohort), cohort.n_rois) == (175, 200)
    assert set(cohort.table.column("n_timepoints").to_pylist()) == {176}
    assert cohort.metadata.atlas == "CC200" and cohort.metadata.roi_names[0] == "CC200_001"
    row = cohort.subject_ids().tolist().index("NYU_0051062")
    assert cohort.table.column("imputed_rois")[row].as_py() == [42]
    fc = cohort.fc([row])[0]
    assert np.all(fc[42, np.arange(200) != 42] == 0) and np.isfinite(fc).all()
    series = np.loadtxt(SHARED_DATA / "abide_nyu_cc200" / "rois_cc200" / "NYU_0051062_rois_cc200.1D", skiprows=1)
    np.testing.assert_allclose(cohort.timeseries(row), series, rtol=1e-6, atol=1e-4)


def test_ids_are_whole_parts_of_the_name():
    ids = {"51261", "116", "NYU_0051036", "sub-01"}
    assert ids_in_name("sub-control51261_AAL116_correlation_matrix.mat", {"51261"}) == {"51261"}
    assert ids_in_name("sub-control51261_AAL116_correlation_matrix.mat", ids) == {"51261", "116"}
    assert ids_in_name("sub-control512610_x.mat", {"51261"}) == set()  # not a part cut at a digit
    assert ids_in_name("NYU_0051036_rois_cc200.1D", ids) == {"NYU_0051036"}
    assert ids_in_name("NYU_0051036_rois_cc200.1D", {"51036"}) == {"51036"}  # digits compare as numbers
    assert ids_in_name("sub-010_ts.tsv", ids) == set()


def write_table(path, rows, sep=","):
    pd.DataFrame(rows, columns=["subject", "dx", "site", "age"]).to_csv(path, index=False, sep=sep)
    return str(path)


def correlation(rng, n):
    x = rng.standard_normal((40, n))
    return np.corrcoef(x, rowvar=False)


@pytest.fixture
def matrix_folder(tmp_path):
    """Four subjects' 5 x 5 matrices in three formats, nested folders, and a table with a fifth subject."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "matrices"
    (folder / "a" / "b").mkdir(parents=True)
    savemat(folder / "a" / "sub-001_fc.mat", {"data": correlation(rng, 5)})
    np.save(folder / "a" / "b" / "sub-002_fc.npy", correlation(rng, 5))
    pd.DataFrame(correlation(rng, 5), columns=list("ABCDE")).to_csv(folder / "sub-003_fc.csv", index=False)
    np.savetxt(folder / "sub-004_fc.tsv", correlation(rng, 5), delimiter="\t")
    (folder / "README").write_text("not a matrix")
    table = write_table(tmp_path / "pheno.csv", [["001", "1", "X", "20"], ["002", "2", "X", "-9999"],
                                                 ["003", "1", "Y", "31"], ["004", "2", "Y", "40"],
                                                 ["005", "1", "Y", "22"]])
    return folder, MatricesConfig(participants=table, id_column="subject", label_column="dx", site_column="site",
                                  label_map={1: "patient", 2: "control"}, label_names=["control", "patient"])


def test_matrices_in_every_format_join_the_table(matrix_folder, tmp_path):
    folder, config = matrix_folder
    report = ingest_matrices(folder, tmp_path / "c.parquet", config)
    cohort = Cohort(tmp_path / "c.parquet")
    assert cohort.subject_ids().tolist() == ["001", "002", "003", "004"]
    assert cohort.labels().tolist() == [1, 0, 1, 0] and cohort.metadata.label_names == ["control", "patient"]
    assert cohort.table.column("age").to_pylist() == [20.0, None, 31.0, 40.0]  # -9999 is missing
    assert cohort.metadata.roi_names == [f"ROI_{i:03d}" for i in range(5)]
    assert any("1 ids of" in note and "have no file" in note for note in report.notes)
    assert any("ignored 1 files" in note for note in report.notes)  # the README


def test_bad_matrix_stops_the_ingest_naming_the_file_or_is_skipped(matrix_folder, tmp_path):
    folder, config = matrix_folder
    bad = correlation(np.random.default_rng(1), 5)
    bad[0, 3] += 0.2
    np.save(folder / "sub-005_fc.npy", bad)
    with pytest.raises(CohortError, match=r"sub-005_fc.npy: not symmetric: \[0, 3\]"):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    assert not (tmp_path / "c.parquet").exists()
    config.on_invalid = "skip"
    report = ingest_matrices(folder, tmp_path / "c.parquet", config)
    assert report.n_scans == 4 and "not symmetric" in report.skipped_subjects[str(folder / "sub-005_fc.npy")]
    np.save(folder / "sub-005_fc.npy", np.eye(6))
    config.on_invalid = "error"
    with pytest.raises(CohortError, match=r"sub-005_fc.npy: matrix has shape \(6, 6\), expected \(5, 5\)"):
        ingest_matrices(folder, tmp_path / "d.parquet", config)


def test_files_and_rows_that_do_not_join_are_named(matrix_folder, tmp_path):
    folder, config = matrix_folder
    np.save(folder / "sub-009_fc.npy", np.eye(5))  # no row in the table
    with pytest.raises(CohortError, match="sub-009_fc.npy: no id of column subject"):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    (folder / "sub-009_fc.npy").unlink()
    np.save(folder / "sub-001_fc_copy.npy", np.eye(5))  # a second file of subject 001
    with pytest.raises(CohortError, match="sub-001_fc_copy.npy: subject 001 already has the file"):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    (folder / "sub-001_fc_copy.npy").unlink()
    config.label_map = {"1": "patient"}  # code 2 unmapped
    with pytest.raises(CohortError, match=r"subject 002 .*column dx is '2', not in label_map"):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    config.id_column = "subjekt"
    with pytest.raises(CohortError, match="id_column='subjekt' is not a column; columns are subject, dx, site, age"):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    assert not (tmp_path / "c.parquet").exists()


def test_ambiguous_names_need_an_id_pattern(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for sid in ("51261", "51262"):
        savemat(folder / f"sub-control{sid}_AAL116_correlation_matrix.mat", {"data": np.eye(3), "extra": 1.0})
    rows = [["51261", "a", "S", "1"], ["51262", "b", "S", "1"], ["116", "a", "S", "1"]]
    table = write_table(tmp_path / "p.csv", rows)
    config = MatricesConfig(participants=table, id_column="subject", label_column="dx")
    with pytest.raises(CohortError, match="several ids of .*: 116, 51261; give id_pattern="):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    config.id_pattern = r"sub-[a-z]+(\d+)_"
    with pytest.raises(CohortError, match="holds the variables data, extra; say which with mat_variable="):
        ingest_matrices(folder, tmp_path / "c.parquet", config)
    config.mat_variable = "data"
    ingest_matrices(folder, tmp_path / "c.parquet", config)
    assert Cohort(tmp_path / "c.parquet").subject_ids().tolist() == ["51261", "51262"]


def test_series_formats_constant_regions_and_atlas_names(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "ts"
    folder.mkdir()
    names = ["Precentral_L", "Precentral_R", "Frontal_Sup_L"]
    pd.DataFrame(rng.standard_normal((30, 3)), columns=names).to_csv(folder / "s1_ts.tsv", sep="\t", index=False)
    flat = rng.standard_normal((30, 3))
    flat[:, 1] = 0.0
    savemat(folder / "ROISignals_s2.mat", {"ROISignals": flat})
    with open(folder / "s3_rois.1D", "w") as handle:
        handle.write("#1\t#2\t#3\n")
        np.savetxt(handle, rng.standard_normal((25, 3)), delimiter="\t")
    table = write_table(tmp_path / "p.tsv", [["s1", "hc", "A", "30"], ["s2", "pt", "A", "31"], ["s3", "hc", "B", ""]],
                        sep="\t")
    config = SeriesConfig(participants=table, id_column="subject", label_column="dx", site_column="site")
    report = ingest_series(folder, tmp_path / "c.parquet", config)
    cohort = Cohort(tmp_path / "c.parquet")
    assert cohort.metadata.roi_names == names  # the first file's header
    assert cohort.table.column("n_timepoints").to_pylist() == [30, 30, 25]
    assert cohort.table.column("imputed_rois").to_pylist() == [[], [1], []]
    assert any("s2: Precentral_R" in note for note in report.notes)
    config.constant_regions, config.on_invalid = "skip", "skip"
    report = ingest_series(folder, tmp_path / "d.parquet", config)
    assert report.n_scans == 2 and "constant regions ['Precentral_R']" in report.skipped_subjects[
        str(folder / "ROISignals_s2.mat")]


def test_atlas_names_in_any_spelling():
    assert get_atlas("AAL116") is get_atlas("aal-116") is AAL116
    assert AAL116.roi_names[90] == "Cerebelum_Crus1_L" and AAL116.roi_names[-1] == "Vermis_10"
    assert len(set(AAL116.roi_names)) == 116
