"""A pretraining corpus: every region of every scan and every vertex (or parcel) of every recording, each a
sequence of windows.

The foundation model is pretrained alone, one sequence at a time, with no graph (BrainLM's masked
autoencoder reads one parcel's series), so a corpus is a bag of sequences (N, f, w) from any mix of sources:
- a cohort Parquet file with time series: each scan's regions (any atlas: the model never sees which region
  a sequence is, so parcellations mix);
- a recording, read as the recording task reads it (``fimp/tasks/recording.py``): a ``parcels`` folder
  (``timeseries.tsv`` and ``rois.tsv``) or a FreeSurfer ``.mgz`` surface recording (both hemispheres, the
  medial wall dropped).
Each sequence is z-scored over its own frames (as the FIMP tasks do); a constant one (a region outside the
brain mask, the medial wall) carries nothing to reconstruct and is dropped, counted per source. A series
longer than one sequence gives every whole, non-overlapping stretch of ``window * n_windows`` frames; a
shorter one is an error naming it. Sequences carry their subject (a scan's subject; a recording is one
subject) so that a validation split keeps subjects apart.

A corpus can outgrow a machine's memory (40,000 scans x 400 regions are 31 GB of sequences), so the job's
process holds only its index (``index_corpus``: one streamed pass, a ``CorpusUnit`` per series, checked and
counted), splits and shards the units, and each training worker reads the sequences of its own units
(``read_units``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fimp.tasks.fmri import READ_CHUNK
from fimp.tasks.recording import read_parcels, read_surface_series
from fmgnn.cohort import Cohort, CohortError
from fmgnn.io import package_path

log = logging.getLogger("fmgnn.pretrain")


@dataclass
class CorpusSource:
    """What one source gave: its path, kind, subjects, sequences, the longest series' frames, and how many
    constant sequences were dropped."""

    path: str
    kind: str
    subjects: int
    sequences: int
    frames: int
    constant_dropped: int = 0


def cut_sequences(series: np.ndarray, window: int, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames, nodes) -> every whole stretch of ``window * n_windows`` frames of every node, z-scored over its
    frames, (stretches * nodes, n_windows, window), stretch-major (stretch 0's nodes first); and which of
    them are constant (std 0: all zeros after scaling)."""
    needed = window * n_windows
    stretches = len(series) // needed
    values = series[:stretches * needed].T.reshape(series.shape[1], stretches, needed).transpose(1, 0, 2)
    values = values.reshape(-1, needed).astype(np.float32)
    std = values.std(1, keepdims=True, ddof=1)  # ddof=1: torch's std, which the FIMP tasks z-score with
    values = (values - values.mean(1, keepdims=True)) / (std + 1e-6)
    return values.reshape(-1, n_windows, window), std[:, 0] == 0


class SeriesSource:
    """One corpus source, read a series at a time: a cohort's scans (a chunk of rows at a time, never the
    whole file) or one recording."""

    def __init__(self, path: str, field: str) -> None:
        self.path = path
        self.local = Path(package_path(path, field)).resolve()  # resolved here: a worker reads it as given
        self.cohort: Cohort | None = None
        if self.local.is_dir():
            self.kind = "parcels"
        elif self.local.name.endswith(".mgz"):
            self.kind = "surface"
        elif self.local.is_file():
            self.kind, self.cohort = "cohort", Cohort(self.local)
        else:
            raise CohortError(f"{field}: {path}: no such file or folder (a cohort .parquet, a parcels folder or a "
                              ".lh.mgz surface recording)")

    @functools.cached_property
    def names(self) -> list[str]:
        """Each series' subject: a cohort's subject column; a recording's name."""
        if self.cohort is not None:
            return [str(subject) for subject in self.cohort.subject_ids()]
        return [self.local.name if self.kind == "parcels" else self.local.name.split(".")[0]]

    def read(self, rows: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(row, (frames, nodes) series) of the series ``rows`` (a cohort's scan rows; 0 for a recording)."""
        if self.cohort is None:
            if rows:
                yield 0, read_parcels(self.local)[0] if self.kind == "parcels" else read_surface_series(self.local)
            return
        for start in range(0, len(rows), READ_CHUNK):
            chunk = rows[start:start + READ_CHUNK]
            yield from zip(chunk, self.cohort.timeseries_rows(chunk))


@dataclass(frozen=True)
class CorpusUnit:
    """What a split keeps on one side and a worker reads whole: one series of one source (a scan, a
    recording), or one node of it when the corpus has a single subject; and the sequences it gives."""

    source: int  # position in ``CorpusIndex.paths``
    row: int  # the series within its source (a cohort's scan row; 0 for a recording)
    subject: str  # prefixed by its source
    node: int  # -1: every node of the series
    sequences: int


@dataclass
class CorpusIndex:
    """What a corpus holds, without its values: the driver splits and shards it, each worker reads its units."""

    paths: list[str]  # local and absolute
    window: int
    n_windows: int
    units: list[CorpusUnit]
    sources: list[CorpusSource]

    @property
    def subjects(self) -> np.ndarray:
        return np.asarray([unit.subject for unit in self.units])

    @property
    def groups(self) -> np.ndarray:
        """What a split keeps together: the subject; the node in a one-subject corpus."""
        return np.asarray([unit.subject if unit.node < 0 else f"{unit.subject}:{unit.node}" for unit in self.units])

    def sequences(self, units: list[int]) -> int:
        return sum(self.units[u].sequences for u in units)


def checked_series(values: np.ndarray, path: str, subject: str, window: int, n_windows: int,
                   field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A series cut into sequences (``cut_sequences``), which are constant, and each sequence's node."""
    needed = window * n_windows
    if len(values) < needed:
        raise CohortError(f"{field}: {path}: {subject} has {len(values)} frames; a sequence needs {needed} "
                          f"(window {window} x n_windows {n_windows})")
    if not np.isfinite(values).all():
        raise CohortError(f"{field}: {path}: {subject} has a missing or infinite value")
    return node_sequences(values, window, n_windows)


def node_sequences(values: np.ndarray, window: int, n_windows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cut_sequences`` of a series, and the node of each sequence."""
    sequences, constant = cut_sequences(values, window, n_windows)
    return sequences, constant, np.tile(np.arange(values.shape[1]), len(values) // (window * n_windows))


def index_corpus(paths: list[str], window: int, n_windows: int, field: str = "corpus") -> CorpusIndex:
    """Every source read once, a series at a time (the memory of one chunk of scans, whatever the corpus's
    size), checked (a short or non-finite series is an error naming it) and counted."""
    series_units, node_counts, sources, subjects, local = [], [], [], set(), []
    for s, path in enumerate(paths):
        source = SeriesSource(path, field)
        if source.cohort is not None and source.cohort.timeseries(0) is None:
            raise CohortError(f"{source.local}: FC only; pretraining reads time series")
        local.append(str(source.local))
        count = dropped = frames = 0
        for row, values in source.read(list(range(len(source.names)))):
            subject = f"{path}:{source.names[row]}"
            _, constant, node_of = checked_series(values, path, source.names[row], window, n_windows, field)
            kept = int((~constant).sum())
            count, dropped, frames = count + kept, dropped + int(constant.sum()), max(frames, len(values))
            if kept:
                series_units.append(CorpusUnit(s, row, subject, -1, kept))
                subjects.add(subject)
                # Per-node counts only while the corpus may turn out to hold one subject (then nodes are units).
                node_counts.append(np.bincount(node_of[~constant], minlength=values.shape[1])
                                   if len(subjects) < 2 else None)
        sources.append(CorpusSource(path, source.kind, len(source.names), count, frames, dropped))
        log.info("corpus: %s (%s): %d subjects, %d sequences of %d frames (%d constant ones dropped)", path,
                 source.kind, len(source.names), count, window * n_windows, dropped)
    units = series_units
    if len(subjects) < 2:
        log.warning("corpus: one subject; validation holds out whole nodes (every stretch of a node on one side), "
                    "so the held-out figure is within that subject")
        units = [CorpusUnit(unit.source, unit.row, unit.subject, node, int(n))
                 for unit, counts in zip(series_units, node_counts) for node, n in enumerate(counts) if n]
    return CorpusIndex(local, window, n_windows, units, sources)


def read_units(index: CorpusIndex, units: list[int]) -> tuple[Tensor, np.ndarray]:
    """The sequences (n, f, w) of ``units`` in corpus order, and the unit of each; a source's series are read
    only where a unit needs them."""
    wanted: dict[int, dict[int, dict[int, int]]] = {}  # source -> row -> node (-1: every node) -> unit
    for u in set(units):
        unit = index.units[u]
        wanted.setdefault(unit.source, {}).setdefault(unit.row, {})[unit.node] = u
    total = index.sequences(list(set(units)))
    x = np.empty((total, index.n_windows, index.window), dtype=np.float32)  # filled in place: one copy in memory
    unit_of, filled = np.empty(total, dtype=np.int64), 0
    for s, path in enumerate(index.paths):
        rows = wanted.get(s, {})
        for row, values in SeriesSource(path, "corpus").read(sorted(rows)):
            sequences, constant, node_of = node_sequences(values, index.window, index.n_windows)
            unit_of_node = np.full(values.shape[1], rows[row].get(-1, -1), dtype=np.int64)
            for node, u in rows[row].items():
                if node >= 0:
                    unit_of_node[node] = u
            of = unit_of_node[node_of]
            keep = ~constant & (of >= 0)
            n = int(keep.sum())
            if filled + n > total:  # the index counted these very series: a bug
                raise RuntimeError(f"more sequences than the corpus index counts ({total}) in {path}, row {row}")
            x[filled:filled + n], unit_of[filled:filled + n] = sequences[keep], of[keep]
            filled += n
    if filled != total:
        raise RuntimeError(f"read {filled} sequences, the corpus index counts {total}")
    return torch.from_numpy(x), unit_of


@dataclass
class Corpus:
    """A corpus read whole (small corpora, tests): sequences and each one's subject and group."""

    x: Tensor  # (N, f, w) sequences of windows, each z-scored over its frames
    subjects: np.ndarray  # (N,) the subject of each sequence, prefixed by its source
    groups: np.ndarray  # (N,) what a split keeps together (the subject; the sequence's node with one subject)
    sources: list[CorpusSource]


def load_corpus(paths: list[str], window: int, n_windows: int, field: str = "corpus") -> Corpus:
    index = index_corpus(paths, window, n_windows, field)
    x, unit_of = read_units(index, list(range(len(index.units))))
    return Corpus(x, index.subjects[unit_of], index.groups[unit_of], index.sources)
