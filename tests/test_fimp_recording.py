"""The recording task on the two real recordings shipped in PyPI packages, span masks and the trivial rows."""

from __future__ import annotations

import json

import pytest
import torch

from fimp.reconstruction import ReconstructionConfig, build_model
from fimp.run_record import FIMPRun
from fimp.tasks.fmri import reconstruction_metrics, window_mask
from fimp.tasks.nodes import held_out_masks, split_nodes
from fimp.tasks.recording import BRAINSPACE_FSA5, RecordingTaskConfig, load_recording
from fmgnn.cohort import CohortError
from fmgnn.config import load_config
from fmgnn.errors import InputError
from pipelines.fimp import FIMPJobConfig, run_fimp


def test_brainfc_rest01_parcels_with_a_knn_graph_over_coordinates():
    task = load_recording(RecordingTaskConfig())
    assert task.x.shape == (100, 15, 10) and task.edge_index.shape == (2, 600)  # 100 parcels, 6 neighbours
    series = task.x.reshape(100, -1)
    torch.testing.assert_close(series.mean(1), torch.zeros(100), atol=1e-4, rtol=0)  # z-scored per parcel
    assert task.span_masks and not (task.edge_index[0] == task.edge_index[1]).any()


def test_brainspace_surface_drops_the_medial_wall_and_keeps_the_mesh():
    task = load_recording(RecordingTaskConfig(source="surface", path=BRAINSPACE_FSA5, window=20, n_windows=10))
    n = task.num_nodes
    assert 2 * 10242 - 2 * 888 <= n < 2 * 10242 and task.x.shape[1:] == (10, 20)
    assert (task.x.reshape(n, -1).std(1) > 0).all()  # no constant vertex left
    edges = set(map(tuple, task.edge_index.t().tolist()))
    assert all((j, i) in edges for i, j in list(edges)[:2000])  # both directions
    degree = torch.bincount(task.edge_index[1], minlength=n)
    assert degree.min() >= 1 and 5.5 < degree.float().mean() < 6.5  # a triangle mesh: about six neighbours


def test_bad_recordings_name_the_file_and_the_field(tmp_path):
    with pytest.raises(CohortError, match=r"150 frames.*recording.n_windows=20.*at most 15"):
        load_recording(RecordingTaskConfig(n_windows=20))
    (tmp_path / "timeseries.tsv").write_text("a\tb\n1\t2\n3\t4\n")
    (tmp_path / "rois.tsv").write_text("name\tx\ty\nA\t0\t0\nB\t1\t1\n")
    with pytest.raises(CohortError, match=r"rois.tsv: no column 'z'"):
        load_recording(RecordingTaskConfig(path=str(tmp_path)))
    with pytest.raises(InputError, match="package 'no_such_package' is not installed"):
        load_recording(RecordingTaskConfig(path="pkg://no_such_package/data"))


def test_span_masks_hide_one_run_of_consecutive_windows():
    mask = window_mask(200, 10, 0.3, torch.Generator().manual_seed(0), span=True)
    assert (mask.sum(1) == 3).all()
    starts = mask.float().argmax(1)
    for row, start in zip(mask, starts.tolist()):
        assert row[start:start + 3].all()
    assert len(set(starts.tolist())) == 8  # every start from 0 to 7 occurs


def test_trivial_rows_on_known_series():
    x = torch.arange(12.0).view(1, 4, 3)  # one node, the series 0, 1, ..., 11 in four windows
    middle = torch.tensor([[False, True, True, False]])
    line = build_model(ReconstructionConfig(kind="interpolation", n_tokens=4, token_values=3))
    torch.testing.assert_close(line(x, middle, None), x)  # a straight line is interpolated exactly
    ends = torch.tensor([[True, False, False, True]])
    assert line(x, ends, None)[0, 0].tolist() == [3.0, 3.0, 3.0]  # the nearest visible value at an end
    mean = build_model(ReconstructionConfig(kind="node_mean", n_tokens=4, token_values=3))
    assert mean(x, middle, None).unique().tolist() == [5.5]  # of 0, 1, 2, 9, 10, 11


def test_recording_job_scores_the_trivial_rows_on_the_models_split_and_masks(tmp_path):
    run = tmp_path / "run"
    summary = run_fimp(load_config(FIMPJobConfig, None, [
        "task=recording", f"run_dir={run}", "models=[mlp,node_mean,interpolation,frame_mean]", "seeds=[0]",
        "optim.epochs=2", "ray.num_workers=0"]))
    # frame_mean is the training parcels' mean at every frame, scored on the test parcels' hidden windows.
    task = load_recording(RecordingTaskConfig())
    train, _, test = split_nodes(task.num_nodes, 0, 0.15, 0.15)
    masks = held_out_masks(task, 0.3, 10_000)
    expected = reconstruction_metrics(task.x[train].mean(0).expand(len(test), 15, 10), task.x[test], masks[test])
    assert summary["models"]["frame_mean"]["r2"]["mean"] == pytest.approx(expected["r2"], abs=1e-6)
    result = json.loads((run / "interpolation" / "seed0.json").read_text())
    assert result["history"] == [] and result["n_parameters"] == 0 and result["n_test"] == len(test)
    manifest = FIMPRun(run).manifest()
    assert manifest["job"] == "train fimp" and manifest["inputs"]["recording.path"] == "pkg://brainfc/data/rest01"
    assert "metrics.json" in manifest["outputs"] and manifest["metrics"] == "metrics.json"


def test_orderless_tokens_refuse_interpolation_and_frame_mean():
    with pytest.raises(InputError, match="interpolation reads a node's tokens as consecutive windows"):
        FIMPJobConfig(task="genes", models=["mlp", "interpolation"])
    with pytest.raises(InputError, match="frame_mean .* needs nodes on one time axis"):
        FIMPJobConfig(task="fmri", models=["mlp", "frame_mean"])
    assert "interpolation" not in FIMPJobConfig(task="genes").models
    assert {"node_mean", "interpolation", "frame_mean"} <= set(FIMPJobConfig(task="recording").models)
