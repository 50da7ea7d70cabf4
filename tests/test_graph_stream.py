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
