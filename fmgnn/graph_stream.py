"""The graphs of a split part, held in memory when they fit and streamed from the cohort file when not.

A training process needs the graphs of its shard of the training subjects, and of the validation and
test subjects. On a brain-network cohort of a few thousand scans they fit, and are built once; on a
cohort of 40,000 scans x 400 regions they would take over 100 GB. So each part is measured against a
memory budget (``GraphConfig.memory_mb``, per part and process):

- **held**: built once and kept; a training pass shuffles them as ``DistributedSampler`` does (the same
  permutation for the same seed and epoch, the same shard per rank), so runs that fit are unchanged by
  the streaming path;
- **streamed**: read from the cohort file and built a chunk at a time, a chunk being at most the budget's
  worth of graphs. A training pass shuffles the order of the shard's Parquet row groups, then the rows
  within each chunk (a block shuffle: what Ray Data's local shuffle buffer and WebDataset do, since a
  row-level global shuffle would read a row group per row). Memory then does not grow with the cohort (the
  heap's freed pages are handed back once a pass has grown the process by four budgets:
  ``release_freed_memory``). Each graph is built once: its tensors are spilled to a file on the process's
  local disk (``GraphSpill``, in the system temporary folder) and later passes read them back, since every
  epoch passes over the shard twice (training, then the BatchNorm refresh) and building took 0.27 of a
  pass's 0.60 s and reading the row groups 0.23 (bench/RESULTS.md). A disk that fills stops the spill,
  with a warning, and the graphs not spilled are built on every pass as before.

A rank's shard is every ``size``-th row of the part, padded by repeating its first rows so that every
rank takes the same number of steps (DDP needs it, and ``DistributedSampler`` does the same).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from fmgnn.cohort import Cohort
from fmgnn.graphs import GraphConfig, build_graphs

Decorate = Callable[[list[Data], np.ndarray], None]  # adds fields to the graphs of the given cohort rows

log = logging.getLogger("fmgnn.graphs")


def graph_bytes(n_rois: int, config: GraphConfig) -> int:
    """What one graph and the FC it is built from take in memory, roughly (bytes)."""
    edges = config.density * n_rois * (n_rois - 1) + (n_rois if config.self_loops else 0)
    return 2 * 4 * n_rois * n_rois + int(edges) * (2 * 8 + 4)  # FC and node features; edge index and weight


def release_freed_memory(slack: int) -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere) once the
    process has grown by more than ``slack`` bytes since it last did.

    A streamed pass frees a chunk of graphs and its batches every few seconds. glibc keeps freed blocks
    between live ones in the process's heap, resident, so a worker's peak memory grew with the chunks a run
    passed through: 1.2-1.6x from 4,000 to 40,000 scans in 3 epochs (bench/RESULTS.md, session 21). Trimming
    after every chunk makes the next chunk fault its pages in again, so it trims only on growth."""
    global _resident_after_trim
    libc = _glibc()
    if libc is None:
        return
    resident = _resident_bytes()
    if _resident_after_trim is None or resident - _resident_after_trim > slack:
        libc.malloc_trim(0)
        _resident_after_trim = _resident_bytes()


_resident_after_trim: int | None = None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:  # glibc means Linux: pages of size, resident, ...
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _glibc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


class GraphSpill:
    """Built graphs written to one local file and read back by position: a streamed part's later passes.

    A graph's tensors lie one after another in the file; what it holds (each field's name, dtype and
    shape, or a plain value) is a layout shared by every graph of the same shapes, so the index costs 12
    bytes a graph. The folder is removed with the object."""

    def __init__(self, n: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fmgnn-graphs-"))
        self.file = open(self.folder / "graphs.bin", "w+b")  # noqa: SIM115 (open for the object's life)
        weakref.finalize(self, GraphSpill.remove, self.file, self.folder)
        self.offsets = np.full(n, -1, dtype=np.int64)
        self.layout_of = np.zeros(n, dtype=np.int32)
        self.layouts: list[tuple[tuple[str, Any, Any], ...]] = []
        self.layout_ids: dict[tuple, int] = {}
        self.size = 0
        self.full = False

    @staticmethod
    def remove(file: Any, folder: Path) -> None:
        file.close()
        shutil.rmtree(folder, ignore_errors=True)

    def __contains__(self, position: int) -> bool:
        return self.offsets[position] >= 0

    def put(self, position: int, graph: Data) -> None:
        if self.full or position in self:
            return
        layout, chunks = [], []
        for key, value in graph.items():
            if torch.is_tensor(value):
                value = value.detach().cpu().contiguous()
                layout.append((key, value.dtype, tuple(value.shape)))
                data = value.view(torch.uint8).reshape(-1).numpy().tobytes() if value.numel() else b""
                chunks.append(data + bytes(-len(data) % 8))  # every field starts 8-byte aligned
            else:
                layout.append((key, None, value))
        layout = tuple(layout)
        try:
            self.file.seek(self.size)
            for chunk in chunks:
                self.file.write(chunk)
        except OSError as error:  # a full disk: the part is built on every pass from here on, as without
            self.full = True
            log.warning("graphs of a streamed part no longer spilled to %s (%s); they are built on every pass",
                        self.folder, error)
            return
        if layout not in self.layout_ids:
            self.layout_ids[layout] = len(self.layouts)
            self.layouts.append(layout)
        self.offsets[position], self.layout_of[position] = self.size, self.layout_ids[layout]
        self.size += sum(len(c) for c in chunks)

    def get(self, positions: list[int]) -> list[Data]:
        """The graphs at ``positions``, read into one buffer: one allocation a window, not one a graph (their
        tensors are views of it until they are batched)."""
        layouts = [self.layouts[self.layout_of[p]] for p in positions]
        sizes = [[-(-math.prod(shape) * dtype.itemsize // 8) * 8 if dtype is not None else 0
                  for _, dtype, shape in layout] for layout in layouts]
        buffer = bytearray(sum(map(sum, sizes)))
        view, start, graphs = memoryview(buffer), 0, []
        for position, layout, fields in zip(positions, layouts, sizes):
            self.file.seek(self.offsets[position])
            self.file.readinto(view[start:start + sum(fields)])
            graph = Data()
            for (key, dtype, shape), size in zip(layout, fields):
                if dtype is None:
                    graph[key] = shape
                    continue
                count = math.prod(shape)
                graph[key] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=start).reshape(shape) \
                    if count else torch.empty(shape, dtype=dtype)
                start += size
            graphs.append(graph)
        return graphs


class PartGraphs:
    """The graphs of the cohort rows ``rows`` (a split part), built with ``config``.

    ``decorate(graphs, rows)`` runs on every graph built (BLEG's stage 3 attaches teacher targets)."""

    def __init__(self, cohort: Cohort, rows: Sequence[int], config: GraphConfig,
                 decorate: Decorate | None = None) -> None:
        self.cohort, self.rows, self.config, self.decorate = cohort, np.asarray(rows, dtype=np.int64), config, decorate
        self.labels = cohort.labels()
        self.chunk = max(1, int(config.memory_mb * 2**20 // graph_bytes(cohort.n_rois, config)))
        self.held = self.build(self.rows) if len(self.rows) <= self.chunk else None
        self.spill = GraphSpill(len(self.rows)) if self.held is None else None

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
            graphs = [self.held[p] for p in window] if not self.streamed else self.read(window)
            for first in range(0, len(graphs), batch_size):
                yield Batch.from_data_list(graphs[first:first + batch_size])
            if self.streamed:
                del graphs
                release_freed_memory(4 * int(self.config.memory_mb * 2**20))

    def read(self, positions: np.ndarray) -> list[Data]:
        """A streamed part's graphs at ``positions``: read from the spill, the others built and spilled."""
        missing = np.unique(positions[self.spill.offsets[positions] < 0])
        built = dict(zip(missing.tolist(), self.build(self.rows[missing]))) if len(missing) else {}
        for position, graph in built.items():
            self.spill.put(position, graph)
        spilled = [p for p in dict.fromkeys(positions.tolist()) if p not in built]
        read = dict(zip(spilled, self.spill.get(spilled)))
        return [built[p] if p in built else read[p] for p in positions.tolist()]

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
