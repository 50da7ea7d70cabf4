"""The graphs of a split part, held in memory when they fit and streamed from the cohort file when not.

A training process needs the graphs of its shard of the training subjects, and of the validation and
test subjects. On a brain-network cohort of a few thousand scans they fit, and are built once; on a
cohort of 40,000 scans x 400 regions they would take over 100 GB. So each part is measured against a
memory budget (``GraphConfig.memory_mb``, per part and process):

- **held**: built once and kept; a training pass shuffles them as ``DistributedSampler`` does (the same
  permutation for the same seed and epoch, the same shard per rank), so runs that fit are unchanged by
  the streaming path;
- **streamed**: read from the cohort file and built a chunk at a time on every pass, a chunk being at
  most the budget's worth of graphs. A training pass shuffles the order of the shard's Parquet row
  groups, then the rows within each chunk (a block shuffle: what Ray Data's local shuffle buffer and
  WebDataset do, since a row-level global shuffle would read a row group per row). Memory then does
  not grow with the cohort.

A rank's shard is every ``size``-th row of the part, padded by repeating its first rows so that every
rank takes the same number of steps (DDP needs it, and ``DistributedSampler`` does the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from fmgnn.cohort import Cohort
from fmgnn.graphs import GraphConfig, build_graphs

Decorate = Callable[[list[Data], np.ndarray], None]  # adds fields to the graphs of the given cohort rows


def graph_bytes(n_rois: int, config: GraphConfig) -> int:
    """What one graph and the FC it is built from take in memory, roughly (bytes)."""
    edges = config.density * n_rois * (n_rois - 1) + (n_rois if config.self_loops else 0)
    return 2 * 4 * n_rois * n_rois + int(edges) * (2 * 8 + 4)  # FC and node features; edge index and weight


class PartGraphs:
    """The graphs of the cohort rows ``rows`` (a split part), built with ``config``.

    ``decorate(graphs, rows)`` runs on every graph built (BLEG's stage 3 attaches teacher targets)."""

    def __init__(self, cohort: Cohort, rows: Sequence[int], config: GraphConfig,
                 decorate: Decorate | None = None) -> None:
        self.cohort, self.rows, self.config, self.decorate = cohort, np.asarray(rows, dtype=np.int64), config, decorate
        self.labels = cohort.labels()
        self.chunk = max(1, int(config.memory_mb * 2**20 // graph_bytes(cohort.n_rois, config)))
        self.held = self.build(self.rows) if len(self.rows) <= self.chunk else None

    @property
    def streamed(self) -> bool:
        return self.held is None

    def __len__(self) -> int:
        return len(self.rows)

    def build(self, rows: np.ndarray) -> list[Data]:
        graphs = build_graphs(self.cohort.fc(rows), self.labels[rows], self.config)
        if self.decorate is not None:
            self.decorate(graphs, rows)
        return graphs

    def __getitem__(self, part: slice) -> list[Data]:
        """The graphs of ``rows[part]``: held, or built now."""
        return self.held[part] if self.held is not None else self.build(self.rows[part])

    def first(self) -> Data:
        return self[:1][0]

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Every graph once, in order (validation and test)."""
        yield from self.ordered(np.arange(len(self.rows)), batch_size)

    def ordered(self, positions: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Batches of the graphs at ``positions`` (indices into ``rows``), in that order; streamed parts
        read and build ``positions`` a chunk at a time."""
        # torch's DataLoader, which these passes replace, drew one value of the global RNG per pass (its
        # workers' base seed); drawn here too, so that the dropout draws that follow, and so the runs of
        # parts that fit, are the same computation as before.
        torch.empty((), dtype=torch.int64).random_()
        step = self.chunk if self.streamed else len(positions)
        step = max(batch_size, step - step % batch_size)  # chunks of whole batches: a batch never spans two
        for start in range(0, len(positions), step):
            window = positions[start:start + step]
            graphs = [self.held[p] for p in window] if not self.streamed else self.build(self.rows[window])
            for first in range(0, len(graphs), batch_size):
                yield Batch.from_data_list(graphs[first:first + batch_size])

    def shard_positions(self, epoch: int, seed: int, rank: int, size: int) -> np.ndarray:
        """This rank's positions for one training pass, shuffled (see the module docstring)."""
        n = len(self.rows)
        per_rank = math.ceil(n / size)
        if not self.streamed:  # DistributedSampler(shuffle=True, seed=seed) after set_epoch(epoch), exactly
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()
            padded = np.concatenate([order, order[:per_rank * size - n]]) if per_rank * size > n else order
            return padded[rank:per_rank * size:size]
        mine = np.arange(n)[rank::size]
        mine = np.concatenate([mine, mine[:per_rank - len(mine)]])
        rng = np.random.default_rng([seed, epoch, rank])
        groups = self.cohort.row_groups(self.rows[mine])
        blocks = [mine[groups == g] for g in rng.permutation(np.unique(groups))]
        order = np.concatenate(blocks)
        for start in range(0, len(order), self.chunk):  # shuffled within each chunk read
            order[start:start + self.chunk] = rng.permutation(order[start:start + self.chunk])
        return order
