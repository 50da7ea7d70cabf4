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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fimp.tasks.nodes import NodeTask
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


@dataclass
class Corpus:
    x: Tensor  # (N, f, w) sequences of windows, each z-scored over its frames
    subjects: np.ndarray  # (N,) the subject of each sequence, prefixed by its source
    groups: np.ndarray  # (N,) what a split keeps together (the subject; the sequence's node with one subject)
    sources: list[CorpusSource]

    def node_task(self, span_masks: bool) -> NodeTask:
        """The corpus as nodes without edges: what the node reconstruction task trains the foundation model on."""
        return NodeTask(x=self.x, edge_index=torch.empty(2, 0, dtype=torch.long),
                        token_names=[f"window{t}" for t in range(self.x.shape[1])], name="corpus",
                        span_masks=span_masks)


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


def read_source(path: str, field: str) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """The kind of source at ``path`` and its (subject, (frames, nodes) series) pairs."""
    local = Path(package_path(path, field))
    if local.is_dir():
        return "parcels", [(local.name, read_parcels(local)[0])]
    if local.name.endswith(".mgz"):
        return "surface", [(local.name.split(".")[0], read_surface_series(local))]
    if not local.is_file():
        raise CohortError(f"{field}: {path}: no such file or folder (a cohort .parquet, a parcels folder or a "
                          ".lh.mgz surface recording)")
    cohort = Cohort(local)
    if cohort.timeseries(0) is None:
        raise CohortError(f"{local}: FC only; pretraining reads time series")
    subjects = cohort.subject_ids()
    return "cohort", [(str(subjects[i]), cohort.timeseries(i)) for i in range(len(cohort))]


def load_corpus(paths: list[str], window: int, n_windows: int, field: str = "corpus") -> Corpus:
    needed = window * n_windows
    x, subjects, nodes, sources = [], [], [], []
    for path in paths:
        kind, series = read_source(path, field)
        count = dropped = 0
        for subject, values in series:
            if len(values) < needed:
                raise CohortError(f"{field}: {path}: {subject} has {len(values)} frames; a sequence needs {needed} "
                                  f"(window {window} x n_windows {n_windows})")
            if not np.isfinite(values).all():
                raise CohortError(f"{field}: {path}: {subject} has a missing or infinite value")
            sequences, constant = cut_sequences(values, window, n_windows)
            node_of = np.tile(np.arange(values.shape[1]), len(values) // needed)[~constant]
            x.append(sequences[~constant])
            count, dropped = count + len(x[-1]), dropped + int(constant.sum())
            subjects += [f"{path}:{subject}"] * len(x[-1])
            nodes += [f"{path}:{subject}:{n}" for n in node_of]
        sources.append(CorpusSource(path, kind, len(series), count, int(max(len(v) for _, v in series)), dropped))
        log.info("corpus: %s (%s): %d subjects, %d sequences of %d frames (%d constant ones dropped)", path, kind,
                 sources[-1].subjects, sources[-1].sequences, needed, dropped)
    subjects = np.asarray(subjects)
    one_subject = len(set(subjects)) < 2
    if one_subject:
        log.warning("corpus: one subject; validation holds out whole nodes (every stretch of a node on one side), "
                    "so the held-out figure is within that subject")
    return Corpus(torch.as_tensor(np.concatenate(x)), subjects, np.asarray(nodes) if one_subject else subjects,
                  sources)
