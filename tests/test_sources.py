import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fmgnn.cohort import Cohort, CohortError
from fmgnn.sources.bids import BidsConfig, ingest_bids
from fmgnn.sources.braingb import BrainGBConfig, ingest_braingb
from fmgnn.sources.corrpops import CorrpopsConfig, ingest_corrpops
from fmgnn.sources.nilearn_abide import AbideConfig, ingest_abide
from fmgnn.sources.synthetic import SyntheticCohort, SyntheticConfig, ingest_synthetic, reconstruction_ceiling


def test_corrpops_real_file(nmda_cohort):
    cohort = Cohort(nmda_cohort)
    assert len(cohort) == 86 and cohort.n_rois == 88
    assert cohort.summary()["label_counts"] == {"control": 43, "diagnosed": 43}
    assert "Pallidum_L" not in cohort.metadata.roi_names
    provenance = cohort.metadata.provenance
    assert provenance["dropped_rois"] == ["Pallidum_L", "Pallidum_R"]
    assert provenance["imputed"]["control_020"] == ["Olfactory_L", "Olfactory_R"]
    assert len(provenance["imputed"]) == 6 and len(provenance["sha256"]) == 64
    fc = cohort.fc()
    assert np.isfinite(fc).all()
    olfactory = cohort.metadata.roi_names.index("Olfactory_L")
    row = cohort.subject_ids().tolist().index("control_020")
    assert cohort.table.column("imputed_rois")[row].as_py() == [olfactory, olfactory + 1]
    assert np.all(fc[row, olfactory, np.arange(88) != olfactory] == 0)


def test_corrpops_drop_subject_and_bad_group(nmda_npz, tmp_path):
    report = ingest_corrpops(nmda_npz, tmp_path / "c.parquet", CorrpopsConfig(impute="drop_subject"))
    assert report.n_subjects == 80 and len(report.skipped_subjects) == 6
    with pytest.raises(CohortError, match="group\\(s\\) patients not found; the file has"):
        ingest_corrpops(nmda_npz, tmp_path / "d.parquet", CorrpopsConfig(groups=["control", "patients"]))
    assert not (tmp_path / "d.parquet").exists()


def test_braingb_dict(tmp_path):
    rng = np.random.default_rng(0)
    timeseries = rng.normal(size=(6, 5, 40))  # (N, R, T) as BNT stores it
    corr = np.stack([np.corrcoef(t) for t in timeseries])
    path = tmp_path / "abide.npy"
    np.save(path, {"timeseires": timeseries, "corr": corr, "label": np.array([0, 1] * 3), "site": ["a"] * 6})
    report = ingest_braingb(path, tmp_path / "c.parquet", BrainGBConfig(label_names=["hc", "asd"]))
    cohort = Cohort(tmp_path / "c.parquet")
    assert report.n_subjects == 6 and cohort.metadata.label_names == ["hc", "asd"]
    np.testing.assert_allclose(cohort.timeseries(2), timeseries[2].T, atol=1e-6)
    np.testing.assert_allclose(cohort.fc([2])[0], corr[2], atol=1e-6)
    corr[3, 0, 1] = 0.5  # no longer symmetric
    np.save(path, {"corr": corr, "label": np.array([0, 1] * 3)})
    with pytest.raises(CohortError, match="subject sub-00003: field fc is not symmetric"):
        ingest_braingb(path, tmp_path / "d.parquet")
    np.save(path, {"corr": corr})
    with pytest.raises(CohortError, match="missing key 'label'"):
        ingest_braingb(path, tmp_path / "d.parquet")


def write_bids(folder, n=6, rois=4):
    rng = np.random.default_rng(1)
    rows = ["participant_id\tgroup\tage\tsex"]
    for i in range(n):
        pid = f"sub-{i:02d}"
        rows.append(f"{pid}\t{'patient' if i % 2 else 'control'}\t{20 + i}\t{'F' if i % 3 else 'M'}")
        ts = rng.normal(size=(25, rois))
        if i % 3 == 0:
            (folder / pid / "func").mkdir(parents=True)
            header = "\t".join(f"roi{j}" for j in range(rois))
            np.savetxt(folder / pid / "func" / f"{pid}_task-rest_timeseries.tsv", ts, delimiter="\t",
                       header=header, comments="")
        elif i % 3 == 1:
            np.savetxt(folder / f"{pid}_timeseries.csv", ts, delimiter=",")
        else:
            np.save(folder / f"{pid}_timeseries.npy", ts)
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")


def test_bids_folder_mixed_formats(tmp_path):
    write_bids(tmp_path / "study")
    report = ingest_bids(tmp_path / "study", tmp_path / "c.parquet", BidsConfig(label_names=["control", "patient"]))
    cohort = Cohort(tmp_path / "c.parquet")
    assert report.n_subjects == 6 and cohort.metadata.roi_names == ["roi0", "roi1", "roi2", "roi3"]
    assert cohort.labels().tolist() == [0, 1, 0, 1, 0, 1]
    assert cohort.table.column("age").to_pylist()[5] == 25.0


def test_bids_sessions_and_runs_are_scans_of_one_subject_and_folds_keep_them_together(tmp_path):
    import json

    from fmgnn.evaluation.splits import FoldConfig
    from pipelines.train import BaselineJobConfig, run_baselines

    folder = tmp_path / "study"
    folder.mkdir()
    rng = np.random.default_rng(3)
    rows = ["participant_id\tgroup"]
    for i in range(12):
        pid = f"sub-{i:02d}"
        rows.append(f"{pid}\t{'patient' if i % 2 else 'control'}")
        for session, run in [(1, 1), (1, 2), (2, 1)][: 1 + i % 3]:
            (folder / pid / f"ses-{session}" / "func").mkdir(parents=True, exist_ok=True)
            np.save(folder / pid / f"ses-{session}" / "func" / f"{pid}_ses-{session}_task-rest_run-{run}_bold.npy",
                    rng.normal(size=(30, 5)))
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    report = ingest_bids(folder, tmp_path / "c.parquet", BidsConfig(file_glob="*_bold.npy"))
    cohort = Cohort(tmp_path / "c.parquet")
    assert (report.n_scans, report.n_subjects, report.max_scans_per_subject) == (24, 12, 3)
    assert "24 scans of 12 subjects (up to 3 per subject" in report.lines()[0]
    scans = cohort.scan_ids().tolist()
    assert "sub-00" in scans and "sub-01_ses-1_task-rest_run-2" in scans and "sub-02_ses-2_task-rest_run-1" in scans
    run_baselines(BaselineJobConfig(cohort=str(tmp_path / "c.parquet"), run_dir=str(tmp_path / "run"),
                                    models=["logistic"], folds=FoldConfig(n_folds=3, seeds=[0, 1])))
    subjects = cohort.subject_ids()
    for split in json.loads((tmp_path / "run" / "splits.json").read_text()):
        sides = [{subjects[i] for i in split[part]} for part in ("train", "val", "test")]
        assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
        assert split["test_subjects"] == sorted(sides[2])
    (folder / "sub-04" / "ses-1" / "func" / "sub-04_ses-1_task-rest_run-1_bold.npy").rename(
        folder / "sub-04" / "ses-1" / "func" / "sub-04_a_bold.npy")
    (folder / "sub-04" / "ses-1" / "func" / "sub-04_ses-1_task-rest_run-2_bold.npy").rename(
        folder / "sub-04" / "ses-1" / "func" / "sub-04_b_bold.npy")
    with pytest.raises(CohortError, match="subject sub-04: 2 files match .* do not tell sessions or runs apart"):
        ingest_bids(folder, tmp_path / "d.parquet", BidsConfig(file_glob="*_bold.npy"))


def test_braingb_subjects_may_repeat_and_structural_weights_ingest(tmp_path):
    rng = np.random.default_rng(4)
    streamlines = rng.integers(0, 300, size=(6, 5, 5)).astype(float)
    streamlines = streamlines + streamlines.transpose(0, 2, 1)
    path = tmp_path / "dti.npy"
    np.save(path, {"corr": streamlines, "label": np.array([0, 0, 1, 1, 0, 1]),
                   "subject": np.array(["a", "a", "b", "b", "c", "d"])})
    with pytest.raises(CohortError, match="expected correlations in .*connectivity=weights"):
        ingest_braingb(path, tmp_path / "c.parquet")
    report = ingest_braingb(path, tmp_path / "c.parquet", BrainGBConfig(connectivity="weights"))
    cohort = Cohort(tmp_path / "c.parquet")
    assert (report.n_scans, report.n_subjects) == (6, 4) and cohort.metadata.connectivity == "weights"
    assert cohort.scan_ids().tolist() == ["a_scan-1", "a_scan-2", "b_scan-1", "b_scan-2", "c", "d"]
    assert cohort.subject_ids().tolist() == ["a", "a", "b", "b", "c", "d"]


def test_a_header_of_column_numbers_is_not_read_as_a_time_point(tmp_path, caplog):
    """Per-subject TSVs as pandas' to_csv writes them: a header row 0, 1, 2, ... above the data."""
    folder = tmp_path / "study"
    folder.mkdir()
    rng = np.random.default_rng(5)
    series = {}
    rows = ["participant_id\tgroup"]
    for i in range(4):
        pid = f"sub-{i:02d}"
        rows.append(f"{pid}\t{'patient' if i % 2 else 'control'}")
        series[pid] = rng.normal(size=(30, 5))
        pd.DataFrame(series[pid]).to_csv(folder / f"{pid}_timeseries.tsv", sep="\t", index=False)
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    assert (folder / "sub-00_timeseries.tsv").read_text().splitlines()[0] == "0\t1\t2\t3\t4"
    with caplog.at_level("WARNING"):
        ingest_bids(folder, tmp_path / "c.parquet")
    cohort = Cohort(tmp_path / "c.parquet")
    assert cohort.timeseries(0).shape == (30, 5)  # not 31 rows, the first one the column numbers
    np.testing.assert_allclose(cohort.timeseries(0), series["sub-00"], atol=1e-6)
    assert "the first row (0, 1, 2, 3, ...) numbers the columns; read as a header" in caplog.text
    assert cohort.metadata.roi_names != ["0", "1", "2", "3", "4"]  # column numbers are not region names


def test_any_atlas_can_be_named_by_its_region_names(tmp_path):
    from fmgnn.errors import InputError

    rng = np.random.default_rng(6)
    corr = np.stack([np.corrcoef(rng.normal(size=(5, 40))) for _ in range(4)])
    path = tmp_path / "mist.npy"
    np.save(path, {"corr": corr, "label": np.array([0, 1, 0, 1])})
    names = ["CER", "DMN", "SM", "VIS", "FPN"]
    with pytest.raises(InputError, match="unknown atlas 'MIST-5': give its region names"):
        ingest_braingb(path, tmp_path / "a.parquet", BrainGBConfig(atlas="MIST-5"))
    ingest_braingb(path, tmp_path / "a.parquet", BrainGBConfig(atlas="MIST-5", atlas_regions=names))
    cohort = Cohort(tmp_path / "a.parquet")
    assert (cohort.metadata.atlas, cohort.metadata.roi_names) == ("MIST-5", names)
    labels = tmp_path / "mist_labels.tsv"
    labels.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(names)))
    ingest_braingb(path, tmp_path / "b.parquet", BrainGBConfig(atlas="MIST-5", atlas_regions=str(labels)))
    assert Cohort(tmp_path / "b.parquet").metadata.roi_names == names
    with pytest.raises(InputError, match="atlas 'MIST-5': 4 region names for data of 5 regions"):
        ingest_braingb(path, tmp_path / "c.parquet", BrainGBConfig(atlas="MIST-5", atlas_regions=names[:4]))
    # A BIDS folder's header names the regions of an atlas fmgnn does not know.
    write_bids(tmp_path / "study")
    ingest_bids(tmp_path / "study", tmp_path / "d.parquet",
                BidsConfig(atlas="MyAtlas-4", file_glob="*.tsv", on_missing="skip"))
    cohort = Cohort(tmp_path / "d.parquet")
    assert (cohort.metadata.atlas, cohort.metadata.roi_names) == ("MyAtlas-4", ["roi0", "roi1", "roi2", "roi3"])


def test_bids_errors_name_file_and_subject(tmp_path):
    folder = tmp_path / "study"
    write_bids(folder)
    (folder / "sub-01_timeseries.csv").unlink()
    with pytest.raises(CohortError, match="subject sub-01: no time-series file"):
        ingest_bids(folder, tmp_path / "c.parquet")
    report = ingest_bids(folder, tmp_path / "c.parquet", BidsConfig(on_missing="skip"))
    assert report.n_subjects == 5 and "sub-01" in report.skipped_subjects
    np.save(folder / "sub-02_timeseries.npy", np.full((25, 4), np.nan))
    with pytest.raises(CohortError, match="sub-02_timeseries.npy: time series holds NaN"):
        ingest_bids(folder, tmp_path / "d.parquet", BidsConfig(on_missing="skip"))
    with pytest.raises(CohortError, match="missing column 'diagnosis'"):
        ingest_bids(folder, tmp_path / "d.parquet", BidsConfig(label_column="diagnosis"))
    assert not (tmp_path / "d.parquet").exists()


def write_abide_layout(data_dir, n=4):
    """Files laid out as nilearn's fetch_abide_pcp stores them, so it needs no network."""
    root = data_dir / "ABIDE_pcp"
    series_dir = root / "cpac" / "nofilt_noglobal"
    series_dir.mkdir(parents=True)
    columns = ["", "SUB_ID", "SITE_ID", "FILE_ID", "DX_GROUP", "AGE_AT_SCAN", "SEX", "qc_rater_1",
               "qc_anat_rater_2", "qc_func_rater_2", "qc_anat_rater_3", "qc_func_rater_3"]
    lines = [",".join(columns)]
    rng = np.random.default_rng(2)
    for i in range(n):
        file_id = f"SITE_{50000 + i}"
        qc = "OK" if i < n - 1 else "fail"  # the last scan fails QC and must be left out
        lines.append(f"{i},{50000 + i},SITE,{file_id},{1 + i % 2},{10 + i},{1 + i % 2},{qc},OK,OK,OK,OK")
        header = "#" + "\t".join(f"Mean_{k}" for k in range(116))
        np.savetxt(series_dir / f"{file_id}_rois_aal.1D", rng.normal(size=(30, 116)), delimiter="\t",
                   header=header[1:], comments="#")
    (root / "Phenotypic_V1_0b_preprocessed1.csv").write_text("\n".join(lines) + "\n")


def test_abide_through_nilearn_fetcher_offline(tmp_path):
    pytest.importorskip("nilearn")
    write_abide_layout(tmp_path / "nilearn_data")
    report = ingest_abide(tmp_path / "abide.parquet", AbideConfig(data_dir=str(tmp_path / "nilearn_data")))
    cohort = Cohort(tmp_path / "abide.parquet")
    assert report.n_subjects == 3  # QC filter applied by nilearn
    assert cohort.n_rois == 90 and cohort.metadata.roi_names[0] == "Precentral_L"
    assert cohort.labels().tolist() == [1, 0, 1]  # DX_GROUP 1 = autism -> label 1
    assert cohort.table.column("sex").to_pylist() == ["M", "F", "M"]
    assert cohort.timeseries(0).shape == (30, 90)


def test_synthetic_is_deterministic_per_subject_and_has_the_effect(tmp_path):
    small = SyntheticCohort(SyntheticConfig(n_subjects=5, seed=7)).subject(3)
    large = SyntheticCohort(SyntheticConfig(n_subjects=500, seed=7)).subject(3)
    np.testing.assert_array_equal(small.timeseries, large.timeseries)
    config = SyntheticConfig(n_subjects=300, n_timepoints=100, effect_networks=["limbic"], effect_size=0.4)
    ingest_synthetic(tmp_path / "s.parquet", config)
    cohort = Cohort(tmp_path / "s.parquet")
    fc, labels = cohort.fc(), cohort.labels()
    limbic = cohort.metadata.networks["limbic"]
    occipital = cohort.metadata.networks["occipital"]
    within = lambda net: fc[:, net][:, :, net].mean(axis=(1, 2))  # noqa: E731
    assert within(limbic)[labels == 1].mean() - within(limbic)[labels == 0].mean() > 0.05
    assert abs(within(occipital)[labels == 1].mean() - within(occipital)[labels == 0].mean()) < 0.02
    with pytest.raises(ValueError, match="effect_networks \\['visual'\\] not in atlas AAL-90"):
        SyntheticCohort(SyntheticConfig(effect_networks=["visual"]))


def test_synthetic_series_split_into_signal_and_noise_and_the_ceiling_follows_the_noise():
    cohort = SyntheticCohort(SyntheticConfig(n_subjects=3, n_timepoints=80))
    signal, noise = cohort.signal_and_noise(1)
    np.testing.assert_allclose(signal + noise, cohort.subject(1).timeseries, rtol=1e-5, atol=1e-5)
    ceilings = [reconstruction_ceiling(SyntheticConfig(n_subjects=5, n_timepoints=100, noise_scale=s), 5)
                for s in (0.0, 0.5, 1.0)]
    assert ceilings[0] == pytest.approx(1.0) and ceilings[0] > ceilings[1] > ceilings[2] > 0.1
    # Default noise: about a quarter of a region's variance is signal (0.277 over 20 subjects of 200 points).
    assert 0.2 < ceilings[2] < 0.35


PEAK_RSS = """
import resource, sys
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
ingest_synthetic(sys.argv[1], SyntheticConfig(n_subjects=int(sys.argv[2]), n_timepoints=50, store="fc"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_synthetic_streams_in_bounded_memory(tmp_path):
    def peak_kib(n):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / f"{n}.parquet"), str(n)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    small, large = peak_kib(500), peak_kib(5000)
    # 4,500 more subjects are ~72 MB of float32 FC triangles; streaming keeps almost none of it in memory.
    assert (tmp_path / "5000.parquet").stat().st_size > 60e6
    assert large - small < 40_000, (small, large)  # KiB


def write_adhd_layout(data_dir, n=3, t=20):
    """ADHD-200 and AAL (SPM12) files laid out as nilearn's fetchers store them."""
    import nibabel as nib
    from nilearn.datasets.func import adhd_ids

    from fmgnn.atlas import AAL90

    names = AAL90.roi_names + [f"Cerebelum_{k}_{s}" for k in range(13) for s in "LR"]
    # AAL-like codes: ascending in the XML's order (as nilearn's LUT assumes) but with gaps,
    # placed at shuffled voxels, so column order and voxel order both differ from name order.
    values = 2001 + 10 * np.arange(len(names)) + np.arange(len(names)) % 2
    labels = np.zeros(216, dtype=np.int16)
    labels[np.random.default_rng(5).permutation(216)[: len(names)]] = values
    labels = labels.reshape(6, 6, 6)
    atlas_dir = data_dir / "aal_SPM12" / "aal" / "atlas"
    atlas_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), atlas_dir / "AAL.nii")
    entries = "".join(f"<label><index>{v}</index><name>{name}</name></label>" for v, name in zip(values, names))
    (atlas_dir / "AAL.xml").write_text(f'<?xml version="1.0"?><atlas><data>{entries}</data></atlas>')
    rng = np.random.default_rng(4)
    rows = ["Subject,site,sex,age,adhd"]
    volumes = {}
    for i, subject in enumerate(adhd_ids()[:n]):
        folder = data_dir / "adhd" / "data" / subject
        folder.mkdir(parents=True)
        volumes[subject] = rng.normal(size=(6, 6, 6, t)).astype(np.float32)
        nib.save(nib.Nifti1Image(volumes[subject], np.eye(4)), folder / f"{subject}_rest_tshift_RPI_voreg_mni.nii.gz")
        (folder / f"{subject}_regressors.csv").write_text(
            "motion_x\tmotion_y\n" + "\n".join(f"{a:.4f}\t{b:.4f}" for a, b in rng.normal(size=(t, 2))) + "\n")
        rows.append(f"{int(subject)},site{i},{'F' if i % 2 else 'M'},{9 + i},{i % 2}")
    (data_dir / "adhd" / "ADHD200_40subs_motion_parameters_and_phenotypics.csv").write_text("\n".join(rows) + "\n")
    return labels, values, names, volumes


def test_adhd_through_nilearn_fetchers_offline(tmp_path):
    pytest.importorskip("nilearn")
    from fmgnn.sources.nilearn_adhd import AdhdConfig, ingest_adhd

    labels, values, names, volumes = write_adhd_layout(tmp_path / "nilearn_data")
    config = AdhdConfig(data_dir=str(tmp_path / "nilearn_data"), n_subjects=3, use_confounds=False,
                        standardize=False, detrend=False)
    report = ingest_adhd(tmp_path / "adhd.parquet", config)
    cohort = Cohort(tmp_path / "adhd.parquet")
    assert report.n_subjects == 3 and cohort.n_rois == 90
    assert cohort.labels().tolist() == [0, 1, 0]
    subject = cohort.subject_ids()[1]
    series = cohort.timeseries(1)  # (T, 90)
    for roi in ("Precentral_L", "Amygdala_R", "Temporal_Inf_R"):
        voxels = labels == values[names.index(roi)]
        expected = volumes[subject][voxels].mean(axis=0)  # the region's mean signal
        np.testing.assert_allclose(series[:, cohort.metadata.roi_names.index(roi)], expected, atol=1e-5)
    # With the regressors and z-scoring, the same files still ingest cleanly.
    ingest_adhd(tmp_path / "adhd2.parquet", AdhdConfig(data_dir=str(tmp_path / "nilearn_data"), n_subjects=3))
    assert np.allclose(Cohort(tmp_path / "adhd2.parquet").timeseries(0).std(axis=0), 1, atol=0.05)
