"""fmgnn.graph_stream: a split part's graphs held when they fit ``graph.memory_mb``, streamed when not."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DistributedSampler

from fmgnn.baselines.gcn import GCNConfig
from fmgnn.baselines.train_gcn import GCNTask
from fmgnn.cohort import METADATA_KEY, Cohort
from fmgnn.engine import run_local
from fmgnn.evaluation.splits import FoldConfig, make_splits
from fmgnn import graph_stream
from fmgnn.graph_stream import PartGraphs, graph_bytes
from fmgnn.graphs import GraphConfig, build_graphs

ROW_GROUP = 8


@pytest.fixture(scope="module")
def grouped(small_synthetic, tmp_path_factory):
    """The small synthetic cohort rewritten with row groups of 8 rows (60 rows: 8 groups)."""
    path = tmp_path_factory.mktemp("grouped") / "cohort.parquet"
    metadata = {METADATA_KEY: Cohort(small_synthetic).metadata.to_json()}
    pq.write_table(pq.read_table(small_synthetic).replace_schema_metadata(metadata), path, row_group_size=ROW_GROUP)
    return path


def streamed_config(graphs_per_chunk: int, n_rois: int = 90) -> GraphConfig:
    return GraphConfig(memory_mb=graphs_per_chunk * graph_bytes(n_rois, GraphConfig()) / 2**20)


def test_reading_rows_loads_only_their_row_groups_and_keeps_the_order_asked(grouped):
    cohort = Cohort(grouped)
    rows = [41, 3, 3, 17]
    expected = Cohort(grouped).fc()[rows]
    np.testing.assert_array_equal(cohort.fc(rows), expected)
    assert cohort._table is None  # the file was never read whole
    assert cohort.row_groups(rows).tolist() == [5, 0, 0, 2]


def test_a_part_that_fits_is_sharded_exactly_as_distributed_sampler_shards_it(grouped):
    """Held graphs keep the order of the in-memory path they replaced, so runs that fit are unchanged."""
    cohort = Cohort(grouped)
    part = PartGraphs(cohort, list(range(5, 52)), GraphConfig())
    assert not part.streamed
    for size in (1, 2, 3):
        for rank in range(size):
            sampler = DistributedSampler(range(len(part)), num_replicas=size, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(4)
            assert part.shard_positions(4, 7, rank, size).tolist() == list(sampler)


def test_a_streamed_part_builds_the_same_graphs_a_chunk_at_a_time(grouped):
    cohort = Cohort(grouped)
    rows = list(range(2, 58, 2))
    part = PartGraphs(cohort, rows, streamed_config(10))
    assert part.streamed and part.chunk == 10
    held = build_graphs(Cohort(grouped).fc(rows), cohort.labels()[rows], GraphConfig())
    streamed = [g for batch in part.batches(4) for g in batch.to_data_list()]
    assert len(streamed) == len(held)
    for a, b in zip(streamed, held):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)
    assert cohort._table is None


def graph_fields(graph):
    return {key: value.tolist() if torch.is_tensor(value) else value for key, value in graph.items()}


def test_a_streamed_part_builds_each_graph_once_and_reads_later_passes_from_its_spill(grouped, monkeypatch):
    """Every epoch passes over the shard twice (training, the BatchNorm refresh): the second pass and every
    later one read the spilled graphs back, equal field for field (a decorated field included)."""
    import fmgnn.graph_stream

    built_rows = []

    def counted(fc, labels, config):
        built_rows.append(len(fc))
        return build_graphs(fc, labels, config)

    def decorate(graphs, rows):
        for graph, row in zip(graphs, rows):
            graph.target = torch.full((1, 3), float(row))

    monkeypatch.setattr(fmgnn.graph_stream, "build_graphs", counted)
    cohort = Cohort(grouped)
    rows = list(range(1, 59, 2))
    part = PartGraphs(cohort, rows, streamed_config(8), decorate)
    fresh = [graph_fields(g) for g in part.build(part.rows)]  # built directly, never spilled
    built_rows.clear()
    positions = part.shard_positions(0, 0, 0, 1)
    first = [g for batch in part.ordered(positions, 4) for g in batch.to_data_list()]
    assert sum(built_rows) == len(rows)  # each graph built once (the shard has no padding with one rank)
    second = [g for batch in part.ordered(positions, 4) for g in batch.to_data_list()]
    later = [g for batch in part.batches(4) for g in batch.to_data_list()]
    assert sum(built_rows) == len(rows)  # nothing built again
    assert [graph_fields(g) for g in first] == [graph_fields(g) for g in second] == [fresh[p] for p in positions]
    assert [graph_fields(g) for g in later] == fresh
    folder = part.spill.folder
    assert folder.is_dir()
    del part, first, second, later
    import gc
    gc.collect()
    assert not folder.exists()  # the spill goes with its part


def test_a_spill_that_cannot_write_builds_on_every_pass(grouped, caplog):
    cohort = Cohort(grouped)
    rows = list(range(0, 40))
    part = PartGraphs(cohort, rows, streamed_config(8))

    class FullDisk:
        def seek(self, offset):
            pass

        def write(self, data):
            raise OSError(28, "No space left on device")

    part.spill.file = FullDisk()
    with caplog.at_level("WARNING", logger="fmgnn.graphs"):
        graphs = [g for batch in part.batches(8) for g in batch.to_data_list()]
    assert part.spill.full and "no longer spilled" in caplog.text and not (part.spill.offsets >= 0).any()
    assert [graph_fields(g) for g in graphs] == [graph_fields(g) for g in part.build(part.rows)]


def test_streamed_shards_cover_the_part_once_per_rank_and_shuffle_by_row_group(grouped):
    cohort = Cohort(grouped)
    part = PartGraphs(cohort, list(range(60)), streamed_config(16))
    shards = [part.shard_positions(3, 0, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 30  # the same number of steps on every rank
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(60))
    assert shards[0].tolist() == part.shard_positions(3, 0, 0, 2).tolist()  # an epoch's order repeats
    assert shards[0].tolist() != part.shard_positions(4, 0, 0, 2).tolist()  # and changes with the epoch
    # A chunk of the order reads few row groups: a rank's 4 rows per group, whole groups in each chunk.
    for start in range(0, 30, 16):
        chunk = shards[0][start:start + 16]
        assert len(np.unique(cohort.row_groups(chunk))) <= 16 // 4 + 1
    uneven = PartGraphs(cohort, list(range(59)), streamed_config(16))  # 59 rows: one rank repeats a row
    assert {len(uneven.shard_positions(0, 0, rank, 2)) for rank in range(2)} == {30}


def test_a_gcn_trains_and_scores_its_test_part_from_a_streamed_cohort(grouped):
    cohort = Cohort(grouped)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=3))[0]
    results = {}
    for name, graph in (("held", GraphConfig()), ("streamed", streamed_config(10))):
        task = GCNTask(name, str(grouped), split, graph, GCNConfig(hidden=16, epochs=3, patience=10), seed=0)
        results[name] = run_local([task])[0]
    for result in results.values():
        assert len(result["test_probabilities"]) == len(split.test) and len(result["history"]) == 3
    assert sorted(results["held"]["test_labels"]) == sorted(results["streamed"]["test_labels"])


@pytest.mark.skipif(graph_stream._glibc() is None, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system_once_the_process_has_grown_past_the_slack():
    """What a streamed pass leaves behind: freed blocks between live ones, resident until trimmed."""
    graph_stream.release_freed_memory(0)
    blocks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # 200 MB of malloc'd blocks
    kept = blocks[::50]  # every 50th stays alive, so the heap cannot simply shrink from its top
    del blocks
    before = graph_stream._resident_bytes()
    graph_stream.release_freed_memory(10**12)  # grown by less than the slack: nothing is trimmed
    assert graph_stream._resident_bytes() > before - 50 * 2**20
    graph_stream.release_freed_memory(64 * 2**20)
    assert graph_stream._resident_bytes() < before - 100 * 2**20
    assert len(kept) == 2000
