import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmgnn.cohort import Cohort, CohortError, CohortMetadata, CohortWriter, Scan, fc_to_triu, triu_to_fc


def metadata(n_rois=4):
    return CohortMetadata(name="t", atlas="none", roi_names=[f"r{i}" for i in range(n_rois)],
                          label_names=["control", "patient"], task="test")


def good_fc(seed=0, n_rois=4):
    ts = np.random.default_rng(seed).normal(size=(30, n_rois))
    return np.corrcoef(ts.T)


def test_round_trip_preserves_values_and_metadata(tmp_path):
    path = tmp_path / "c.parquet"
    ts = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    with CohortWriter(path, metadata()) as writer:
        writer.add(Scan("a", 0, timeseries=ts, age=30.5, sex="F", site="s1"))
        writer.add(Scan("b", 1, fc=good_fc()))
        writer.set_provenance({"adapter": "test"})
    cohort = Cohort(path)
    assert len(cohort) == 2 and cohort.metadata.label_names == ["control", "patient"]
    assert cohort.metadata.provenance == {"adapter": "test"}
    np.testing.assert_array_equal(cohort.timeseries(0), ts)
    np.testing.assert_allclose(cohort.fc([1])[0], good_fc(), atol=1e-6)
    np.testing.assert_allclose(cohort.fc([0])[0], np.corrcoef(ts.T), atol=1e-5)  # FC from time series
    row = cohort.table.slice(0, 1).to_pylist()[0]
    assert (row["label_name"], row["age"], row["sex"], row["site"]) == ("control", 30.5, "F", "s1")


def test_triangle_helpers_invert_each_other():
    fc = good_fc(n_rois=6)
    np.testing.assert_allclose(triu_to_fc(fc_to_triu(fc, 6, "x"), 6), fc, atol=1e-6)


def out_of_range_fc():
    fc = good_fc()
    fc[0, 1] = fc[1, 0] = 2.0
    return fc


@pytest.mark.parametrize("scan, message", [
    (Scan("s1", 0, fc=good_fc()[:3, :3]), r"subject s1: field fc has shape \(3, 3\), expected \(4, 4\)"),
    (Scan("s1", 0, fc=good_fc() + np.triu(np.full((4, 4), 0.1), 1)), "subject s1: field fc is not symmetric"),
    (Scan("s1", 0, timeseries=np.full((10, 4), np.nan)), "subject s1: field timeseries holds 40 NaN/inf"),
    (Scan("s1", 0, timeseries=np.ones((10, 3))), r"subject s1: field timeseries has shape \(10, 3\)"),
    (Scan("s1", 2, fc=good_fc()), "subject s1: field label is 2, expected 0..1"),
    (Scan("s1", 0), "subject s1: neither timeseries nor fc"),
    (Scan("s1", 0, fc=out_of_range_fc()), r"subject s1: field fc holds \|r\| = 2"),
])
def test_bad_rows_name_subject_and_field_and_leave_no_file(tmp_path, scan, message):
    path = tmp_path / "c.parquet"
    with pytest.raises(CohortError, match=message):
        with CohortWriter(path, metadata(), source="in.npz") as writer:
            writer.add(Scan("ok", 0, fc=good_fc()))
            writer.add(scan)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_duplicate_subject_and_empty_cohort(tmp_path):
    path = tmp_path / "c.parquet"
    with pytest.raises(CohortError, match=r"in.npz: subject a: duplicate subject_id \(several scans of one subject "
                                          r"need a scan_id each\)"):
        with CohortWriter(path, metadata(), source="in.npz") as writer:
            writer.add(Scan("a", 0, fc=good_fc()))
            writer.add(Scan("a", 1, fc=good_fc(1)))
    with pytest.raises(CohortError, match="the cohort is empty"):
        with CohortWriter(path, metadata(), source="in.npz"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.parquet"
    with CohortWriter(path, metadata()) as writer:
        writer.add(Scan("a", 0, fc=good_fc()))
    before = path.read_bytes()
    with pytest.raises(CohortError):
        with CohortWriter(path, metadata()) as writer:
            writer.add(Scan("b", 0, fc=np.full((4, 4), np.inf)))
    assert path.read_bytes() == before


def test_reader_rejects_foreign_truncated_and_missing_files(tmp_path):
    with pytest.raises(CohortError, match="cohort file not found"):
        Cohort(tmp_path / "nope.parquet")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    with pytest.raises(CohortError, match="not an fmgnn cohort"):
        Cohort(foreign)
    path = tmp_path / "c.parquet"
    with CohortWriter(path, metadata()) as writer:
        writer.add(Scan("a", 0, fc=good_fc()))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CohortError, match="truncated.parquet: not a readable Parquet file, or truncated"):
        Cohort(truncated)


def test_metadata_checks_coordinates_and_version(tmp_path):
    bad = metadata()
    bad.roi_coords = [[0.0, 0.0, 0.0]]
    with pytest.raises(CohortError, match=r"roi_coords has shape \(1, 3\), expected \(4, 3\)"):
        CohortWriter(tmp_path / "c.parquet", bad)
    weights = metadata()
    weights.connectivity = "streamlines"
    with pytest.raises(CohortError, match=r"connectivity is 'streamlines', expected one of \['correlation', "
                                          r"'weights'\]"):
        CohortWriter(tmp_path / "c.parquet", weights)
    future = metadata()
    future.format_version = 99
    with pytest.raises(CohortError, match="format version 99 is not supported"):
        CohortWriter(tmp_path / "c.parquet", future)


def test_scans_of_one_subject_share_its_id_and_scan_ids_stay_unique(tmp_path):
    path = tmp_path / "c.parquet"
    with CohortWriter(path, metadata()) as writer:
        writer.add(Scan("sub-1", 0, fc=good_fc(0), scan_id="sub-1_ses-1", site="a"))
        writer.add(Scan("sub-1", 0, fc=good_fc(1), scan_id="sub-1_ses-2", site="a"))
        writer.add(Scan("sub-2", 1, fc=good_fc(2), site="b"))
    cohort = Cohort(path)
    assert cohort.scan_ids().tolist() == ["sub-1_ses-1", "sub-1_ses-2", "sub-2"]
    assert cohort.subject_ids().tolist() == ["sub-1", "sub-1", "sub-2"] and cohort.sites().tolist() == ["a", "a", "b"]
    summary = cohort.summary()
    assert (summary["n_scans"], summary["n_subjects"], summary["max_scans_per_subject"]) == (3, 2, 2)
    with pytest.raises(CohortError, match="in.npz: scan x_ses-1: duplicate scan_id"):
        with CohortWriter(tmp_path / "d.parquet", metadata(), source="in.npz") as writer:
            writer.add(Scan("x", 0, fc=good_fc(), scan_id="x_ses-1"))
            writer.add(Scan("x", 1, fc=good_fc(1), scan_id="x_ses-1"))


def test_version_1_files_still_read_with_the_subject_as_scan_id(tmp_path):
    """A file as fmgnn wrote it before format 2: no scan_id column, subject_id unique."""
    path = tmp_path / "v1.parquet"
    with CohortWriter(path, metadata()) as writer:
        writer.add(Scan("a", 0, fc=good_fc(0)))
        writer.add(Scan("b", 1, fc=good_fc(1)))
    table = pq.read_table(path).drop_columns(["scan_id"])
    old = CohortMetadata.from_json(Cohort(path).metadata.to_json())
    old.format_version = 1
    pq.write_table(table.replace_schema_metadata({b"fmgnn.cohort": old.to_json()}), tmp_path / "old.parquet")
    cohort = Cohort(tmp_path / "old.parquet")
    assert cohort.scan_ids().tolist() == cohort.subject_ids().tolist() == ["a", "b"]
    assert cohort.sites() is None
    current = CohortMetadata.from_json(old.to_json())
    current.format_version = 2  # a version-2 file must have the column
    pq.write_table(table.replace_schema_metadata({b"fmgnn.cohort": current.to_json()}), tmp_path / "bad.parquet")
    with pytest.raises(CohortError, match=r"bad.parquet: missing column\(s\) scan_id"):
        Cohort(tmp_path / "bad.parquet")


def test_structural_weights_are_checked_as_non_negative_not_as_correlations(tmp_path):
    streamlines = np.random.default_rng(0).integers(0, 500, size=(4, 4)).astype(float)
    streamlines = streamlines + streamlines.T
    with pytest.raises(CohortError, match=r"expected correlations in \[-1, 1\] .*connectivity=weights"):
        with CohortWriter(tmp_path / "c.parquet", metadata()) as writer:
            writer.add(Scan("a", 0, fc=streamlines))
    weights = metadata()
    weights.connectivity = "weights"
    with CohortWriter(tmp_path / "c.parquet", weights) as writer:
        writer.add(Scan("a", 0, fc=streamlines))
        writer.add(Scan("b", 1, fc=streamlines * 2))
    assert Cohort(tmp_path / "c.parquet").summary()["connectivity"] == "weights"
    np.testing.assert_allclose(Cohort(tmp_path / "c.parquet").fc([1])[0][0, 1], 2 * streamlines[0, 1])
    negative = streamlines.copy()
    negative[0, 1] = negative[1, 0] = -1.0
    with pytest.raises(CohortError, match="subject n: field fc holds -1, expected non-negative weights"):
        with CohortWriter(tmp_path / "d.parquet", weights) as writer:
            writer.add(Scan("n", 0, fc=negative))
