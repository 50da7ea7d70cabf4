"""FIMP task data: fMRI windows, kNN graphs, masks, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fimp.tasks.fmri import (FMRITaskConfig, knn_edges, load_scans, nearest_edges, reconstruction_metrics,
                             scan_graph, window_mask)
from fmgnn.cohort import Cohort, CohortError


def test_knn_edges_point_from_the_most_correlated_regions():
    similarity = torch.tensor([[1.0, 0.9, 0.1, 0.5], [0.9, 1.0, 0.2, 0.3], [0.1, 0.2, 1.0, 0.8], [0.5, 0.3, 0.8, 1.0]])
    edges = knn_edges(similarity, 2)
    into = {t: sorted(edges[0, edges[1] == t].tolist()) for t in range(4)}
    assert into == {0: [1, 3], 1: [0, 3], 2: [1, 3], 3: [0, 2]}  # never a self-loop


def test_nearest_edges_are_the_dense_knn_edges_without_the_distance_matrix():
    """The KD-tree's edges equal the dense path's on points without ties; a repeated point is never its own
    neighbour, and a target has k sources."""
    points = np.random.default_rng(0).random((300, 3))
    dense = knn_edges(-torch.cdist(torch.as_tensor(points), torch.as_tensor(points)), 5)
    tree = nearest_edges(points, 5)
    as_set = lambda e: set(map(tuple, e.T.tolist()))  # noqa: E731
    assert tree.shape == dense.shape == (2, 1500) and as_set(tree) == as_set(dense)
    repeated = nearest_edges(np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]), 2)
    assert (repeated[0] != repeated[1]).all() and torch.bincount(repeated[1]).tolist() == [2, 2, 2, 2]


def test_scan_graph_windows_and_normalisation():
    rng = np.random.default_rng(0)
    series = rng.standard_normal((230, 6)) * 5 + 3
    graph = scan_graph(series, FMRITaskConfig(window=20, n_windows=10, k=3))
    assert graph.x.shape == (6, 10, 20) and graph.edge_index.shape == (2, 18)
    flat = graph.x.reshape(6, 200)
    torch.testing.assert_close(flat.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    np.testing.assert_allclose(flat[2, 20:40].numpy(), ((series[20:40, 2] - series[:200, 2].mean())
                                                      / series[:200, 2].std(ddof=1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(CohortError, match="100 time points, the task needs 200"):
        scan_graph(series[:100], FMRITaskConfig())


def test_masks_hide_the_ratio_and_metrics_count_masked_windows_only():
    mask = window_mask(50, 10, 0.2, torch.Generator().manual_seed(0))
    assert mask.shape == (50, 10) and (mask.sum(1) == 2).all()
    assert not torch.equal(mask[0], mask[1])  # random per node
    target = torch.randn(50, 10, 4)
    predicted = target.clone()
    predicted[~mask] = 100.0  # errors on visible windows do not count
    assert reconstruction_metrics(predicted, target, mask) == {"mse": 0.0, "r2": 1.0}
    metrics = reconstruction_metrics(torch.zeros_like(target), target, mask)
    assert metrics["r2"] == pytest.approx(-(target[mask].mean() ** 2 / target[mask].var(unbiased=False)).item(),
                                          abs=1e-4)


def test_fc_only_cohorts_are_refused_with_the_subject(nmda_cohort):
    with pytest.raises(CohortError, match="has no time series"):
        load_scans(Cohort(nmda_cohort), [0], FMRITaskConfig())


def test_synthetic_time_series_load(small_synthetic):
    graphs = load_scans(Cohort(small_synthetic), [0, 1], FMRITaskConfig(window=20, n_windows=3, k=4))
    assert graphs[0].x.shape == (90, 3, 20) and graphs[0].edge_index.shape == (2, 360)


@pytest.mark.parametrize("kind", ["fimp", "foundation", "mlp", "gcn", "sage", "gat", "gin", "gps"])
def test_every_model_reconstructs_a_tiny_cohort_better_than_the_mean(kind, small_synthetic):
    """Each model, a few steps of Adam on 4 scans: shapes, masked-only loss, and learning at all."""
    from torch_geometric.data import Batch

    from fimp.foundation import FoundationConfig
    from fimp.reconstruction import ReconstructionConfig, build_model, masked_mse

    torch.manual_seed(0)
    task = FMRITaskConfig(window=10, n_windows=4, k=4)
    batch = Batch.from_data_list(load_scans(Cohort(small_synthetic), [0, 1, 2, 3], task))
    mask = window_mask(batch.num_nodes, 4, 0.25, torch.Generator().manual_seed(1))
    config = ReconstructionConfig(kind=kind, n_tokens=4, token_values=10, gnn_hidden=32,
                                  foundation=FoundationConfig(hidden=32, heads=4, layers=1, intermediate=64))
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    extra = {"batch": batch.batch} if kind == "gps" else {}
    losses = []
    for _ in range(30):
        predicted = model(batch.x, mask, batch.edge_index, **extra)
        assert predicted.shape == batch.x.shape
        loss = masked_mse(predicted, batch.x, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    # A hidden window's true values never reach the model: changing them changes no prediction.
    changed = batch.x.clone()
    changed[mask] = 99.0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(changed, mask, batch.edge_index, **extra),
                                   model(batch.x, mask, batch.edge_index, **extra))


def test_fimp_job_checks_lengths_and_pretrained_shapes_before_it_writes(small_synthetic, tmp_path, caplog):
    from fimp.foundation import FoundationConfig
    from fimp.hf_export import save_foundation
    from fimp.reconstruction import ReconstructionConfig, build_model
    from fmgnn.config import load_config
    from fmgnn.errors import InputError
    from pipelines.fimp import FIMPJobConfig, run_fimp

    base = [f"cohort={small_synthetic}", "models=[mlp]", "seeds=[0]", "optim.epochs=1", "ray.num_workers=0",
            "tracking.enabled=false", "fmri.window=10"]
    # Too short: 60 time points, 7 windows of 10 asked.
    with pytest.raises(CohortError, match=r"has 60 time points; the task needs 70 \(fmri.window=10 x "
                                          r"fmri.n_windows=7\): lower fmri.n_windows to at most 6"):
        run_fimp(load_config(FIMPJobConfig, None, [*base, f"run_dir={tmp_path / 'short'}", "fmri.n_windows=7"]))
    assert not (tmp_path / "short" / "config.yaml").exists()
    # Longer than needed: said, with how much is used.
    with caplog.at_level("WARNING"):
        run_fimp(load_config(FIMPJobConfig, None, [*base, f"run_dir={tmp_path / 'cut'}", "fmri.n_windows=4"]))
    assert "the first 40 of up to 60 time points per scan are used" in caplog.text
    # A pretrained folder of another shape: named, before anything is written.
    foundation = FoundationConfig(hidden=16, heads=2, layers=1, intermediate=32)
    model = build_model(ReconstructionConfig(kind="foundation", n_tokens=4, token_values=10, foundation=foundation))
    save_foundation(model, tmp_path / "fm")
    shape = ["model.foundation={hidden: 16, heads: 2, layers: 1, intermediate: 32}", f"pretrained={tmp_path / 'fm'}",
             "models=[fimp_pretrained,mlp]"]
    with pytest.raises(InputError, match=r"its learned positions are for 4 windows, this task has 5"):
        run_fimp(load_config(FIMPJobConfig, None, [*base, *shape, f"run_dir={tmp_path / 'p'}", "fmri.n_windows=5"]))
    with pytest.raises(InputError, match=r"model.foundation.hidden=32 but the folder has 16"):
        run_fimp(load_config(FIMPJobConfig, None, [*base, *shape, f"run_dir={tmp_path / 'p'}", "fmri.n_windows=4",
                                                   "model.foundation.hidden=32"]))
    assert not (tmp_path / "p" / "config.yaml").exists()
    # The configs' pretrained=foundation default does not stand in the way of a baseline-only run.
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(FIMPJobConfig, configs / "fimp_fmri.yaml", ["models=[mlp]"]).models == ["mlp"]


def test_gps_under_ddp_keeps_each_scans_batch_vector(small_synthetic):
    """DDP wraps the model; the reconstruction loop must still hand GPS the batch vector, or its global
    attention mixes the scans of a batch (the bug of the hand-written loop: ``model.config`` on the wrapper)."""
    import socket

    import torch.distributed as dist
    from torch_geometric.data import Batch

    from fimp.reconstruction import ReconstructionConfig, build_model
    from fimp.train_reconstruction import run_model

    task = FMRITaskConfig(window=10, n_windows=4, k=4)
    batch = Batch.from_data_list(load_scans(Cohort(small_synthetic), [0, 1, 2], task))
    mask = window_mask(batch.num_nodes, 4, 0.25, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = build_model(ReconstructionConfig(kind="gps", n_tokens=4, token_values=10, gnn_hidden=16)).eval()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        with torch.no_grad():
            alone = run_model(model, batch.x, mask, batch.edge_index, batch.batch)
            under_ddp = run_model(wrapped, batch.x, mask, batch.edge_index, batch.batch)
            mixed = model(batch.x, mask, batch.edge_index)  # no batch vector: one graph of all scans
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(under_ddp, alone)
    assert not torch.allclose(mixed, alone, atol=1e-4)  # the batch vector matters, so the check has teeth


def test_each_worker_reads_only_its_shard_of_the_training_scans(small_synthetic):
    from fimp.reconstruction import ReconstructionConfig
    from fimp.train_reconstruction import ReconstructionSpec, ReconstructionTask, rank_shard
    from fmgnn.engine import World

    rows = list(range(3, 14))  # 11 rows over 3 ranks: 4 each, the short shards padded with their own rows
    shards = [rank_shard(rows, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4] and sorted(set(sum(shards, []))) == rows
    assert shards[2] == [5, 8, 11, 5] and rank_shard(rows, 0, 1) == rows
    config = FMRITaskConfig(window=10, n_windows=4, k=4)
    spec = ReconstructionSpec(str(small_synthetic), list(range(40)), [40, 41], [42, 43], config,
                              ReconstructionConfig(kind="mlp", n_tokens=4, token_values=10))
    task = ReconstructionTask("shard", spec)
    task.setup(World(rank=1, size=2))
    expected = load_scans(Cohort(small_synthetic), list(range(1, 40, 2)), config)
    assert len(task.train) == 20 and all(torch.equal(a.x, b.x) for a, b in zip(task.train, expected))
    epoch0 = [batch.x.clone() for batch, _ in task.batches(0, torch.Generator().manual_seed(0))]
    assert sum(len(x) for x in epoch0) == 20 * Cohort(small_synthetic).n_rois
    again = [batch.x for batch, _ in task.batches(0, torch.Generator().manual_seed(0))]
    other = [batch.x for batch, _ in task.batches(1, torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again))
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, other))  # reshuffled every epoch


def score_shard(rank: int, size: int, cohort_path: str, init_file: str, out: Path) -> None:
    """One rank of a worker group: its shares of the validation and test scans, scored with a fixed model."""
    from fimp.reconstruction import ReconstructionConfig
    from fimp.train_reconstruction import ReconstructionSpec, ReconstructionTask
    from fmgnn.engine import World

    if init_file:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    spec = ReconstructionSpec(cohort_path, list(range(20)), [20, 21, 22, 23, 24], [25, 26, 27],
                              FMRITaskConfig(window=10, n_windows=4, k=4),
                              ReconstructionConfig(kind="mlp", n_tokens=4, token_values=10), seed=3)
    task = ReconstructionTask("parts", spec)
    task.setup(World(rank=rank, size=size))
    torch.manual_seed(0)
    model = task.build_model()
    scores = {part: task.evaluate(model, part)[0] for part in ("val", "test")}
    masks = {part: [m.tolist() for m in task.masks[part]] for part in ("val", "test")}
    scans = {part: [g.x.tolist() for g in task.parts[part]] for part in ("val", "test")}
    out.mkdir(exist_ok=True)
    torch.save({"scores": scores, "masks": masks, "scans": scans}, out / f"rank{rank}-of-{size}.pt")
    if init_file:
        torch.distributed.destroy_process_group()


def test_each_worker_scores_its_share_of_the_validation_and_test_scans(small_synthetic, tmp_path):
    """Two ranks hold every other validation and test scan, with the hidden windows one rank draws for them,
    and their summed metrics are one rank's, not each rank's own share's."""
    score_shard(0, 1, str(small_synthetic), "", tmp_path)
    torch.multiprocessing.spawn(score_shard, args=(2, str(small_synthetic), str(tmp_path / "init"), tmp_path),
                                nprocs=2, join=True)
    alone, *ranks = (torch.load(tmp_path / name, weights_only=False)
                     for name in ("rank0-of-1.pt", "rank0-of-2.pt", "rank1-of-2.pt"))
    for part, n in (("val", 5), ("test", 3)):
        assert [len(r["scans"][part]) for r in ranks] == [(n + 1) // 2, n // 2]
        for key in ("scans", "masks"):
            assert ranks[0][key][part] == alone[key][part][0::2] and ranks[1][key][part] == alone[key][part][1::2]
        for rank in ranks:
            assert rank["scores"][part] == pytest.approx(alone["scores"][part], rel=1e-9)
    # Rank 1's own share scores otherwise (no process group here: its sums are its own), so the sum has teeth.
    score_shard(1, 2, str(small_synthetic), "", tmp_path / "own")
    own = torch.load(tmp_path / "own" / "rank1-of-2.pt", weights_only=False)
    assert own["scores"]["val"]["mse"] != pytest.approx(alone["scores"]["val"]["mse"], rel=1e-3)


def test_scans_are_read_by_row_group_never_as_the_whole_cohort(small_synthetic, monkeypatch):
    """``Cohort.table`` reads the whole file; a worker's shard of scans must come from their row groups only."""
    def whole_file(self):
        raise AssertionError("the whole cohort was read")

    expected = load_scans(Cohort(small_synthetic), [5, 1, 7], FMRITaskConfig(window=10, n_windows=4, k=4))
    monkeypatch.setattr(Cohort, "table", property(whole_file))
    cohort = Cohort(small_synthetic)
    with pytest.raises(AssertionError, match="whole cohort"):
        cohort.table  # noqa: B018 (the guard is in place)
    graphs = load_scans(cohort, [5, 1, 7], FMRITaskConfig(window=10, n_windows=4, k=4))
    assert all(torch.equal(a.x, b.x) for a, b in zip(graphs, expected))
    assert cohort.timeseries(3).shape == (60, cohort.n_rois)
