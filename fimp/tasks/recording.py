"""FIMP task: one fMRI recording as a graph of its regions or surface vertices (a node task).

Every node is a region (a parcel) or a cortical vertex; its tokens are windows of its time series,
z-scored per node over the frames used (as the scan task does, and as BrainLM scales each parcel before
masking). Nodes, not scans, are split into train, validation and test: a test node's hidden windows are
predicted from its own visible windows and its neighbours'. Masks hide one run of consecutive windows
per node (``mask_span``), so a hidden window is not simply interpolated between its visible neighbours.

Sources:
- ``parcels``: a folder with ``timeseries.tsv`` (a header row, then one row per frame, one column per
  parcel) and ``rois.tsv`` (one row per parcel in the same order, with ``x``, ``y``, ``z`` columns);
  edges join each parcel to its k nearest parcels in space. E.g. brainfc's ``rest01`` (100 Schaefer
  parcels x 150 frames): ``pkg://brainfc/data/rest01``.
- ``surface``: a FreeSurfer ``.mgz`` recording of the left hemisphere (vertices x frames; the right
  hemisphere's file, ``lh`` replaced by ``rh``, is read too) and its GIfTI surface mesh (``mesh``, the
  same replacement); edges are the mesh's. Constant vertices (the medial wall) are dropped. E.g.
  brainspace's fsaverage5 recording (2 x 10,242 vertices x 652 frames, 888 medial-wall vertices each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fmgnn.config import LocalPath
from fimp.tasks.fmri import nearest_edges
from fimp.tasks.nodes import NodeTask
from fmgnn.cohort import CohortError
from fmgnn.io import package_path

BRAINFC_REST = "pkg://brainfc/data/rest01"
BRAINSPACE_FSA5 = "pkg://brainspace/datasets/preprocessing/sub-010188_ses-02_task-rest_acq-AP_run-01.fsa5.lh.mgz"
BRAINSPACE_MESH = "pkg://brainspace/datasets/surfaces/fsa5.pial.lh.gii"


@dataclass
class RecordingTaskConfig:
    """Args:
        source: ``parcels`` or ``surface`` (see the module's docstring).
        path: parcels: the folder; surface: the left hemisphere's ``.mgz`` file. ``pkg://package/path``
            reads a file shipped in an installed Python package.
        mesh: surface: the left hemisphere's GIfTI mesh.
        k: parcels: neighbours per parcel in the kNN graph over coordinates.
        window: Frames per token.
        n_windows: Tokens per node; the first ``window * n_windows`` frames are used.
        mask_ratio: Share of each node's windows hidden (at least one).
        mask_span: Hide one run of consecutive windows (else windows drawn at random).
    """

    source: Literal["parcels", "surface"] = "parcels"
    path: LocalPath = BRAINFC_REST
    mesh: LocalPath = BRAINSPACE_MESH
    k: int = 6
    window: int = 10
    n_windows: int = 15
    mask_ratio: float = 0.3
    mask_span: bool = True


def read_parcels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, parcels) series and (parcels, 3) coordinates."""
    series_path, rois_path = folder / "timeseries.tsv", folder / "rois.tsv"
    for path in (series_path, rois_path):
        if not path.is_file():
            raise CohortError(f"{folder}: no {path.name} (a parcels folder holds timeseries.tsv and rois.tsv)")
    try:
        series = np.loadtxt(series_path, delimiter="\t", skiprows=1, dtype=np.float32, ndmin=2)
    except ValueError as error:  # numpy names the row that does not parse
        raise CohortError(f"{series_path}: {error}") from error
    header = rois_path.read_text().splitlines()[0].split("\t")
    missing = [c for c in ("x", "y", "z") if c not in header]
    if missing:
        raise CohortError(f"{rois_path}: no column {missing[0]!r} (the header has {header})")
    rows = [line.split("\t") for line in rois_path.read_text().splitlines()[1:] if line.strip()]
    if len(rows) != series.shape[1]:
        raise CohortError(f"{rois_path}: {len(rows)} parcels, but {series_path.name} has {series.shape[1]} columns")
    try:
        coords = np.asarray([[float(row[header.index(c)]) for c in ("x", "y", "z")] for row in rows], dtype=np.float32)
    except (ValueError, IndexError) as error:
        raise CohortError(f"{rois_path}: a parcel's x, y or z is missing or not a number ({error})") from error
    return series, coords


def hemisphere_paths(path: Path) -> list[Path]:
    """Both hemispheres' files of a left-hemisphere path (``.lh.`` and ``.rh.``), checked to exist."""
    paths = [Path(str(path).replace(".lh.", f".{hemisphere}.")) for hemisphere in ("lh", "rh")]
    for each in paths:
        if not each.is_file():
            raise CohortError(f"{each}: no such file (a surface recording is read as both hemispheres, .lh. and .rh.)")
    return paths


def read_hemisphere(path: Path) -> np.ndarray:
    """(vertices, frames) of one hemisphere's FreeSurfer recording."""
    import nibabel

    values = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)
    return values.reshape(values.shape[0], -1)


def read_surface_series(recording: Path) -> np.ndarray:
    """(frames, vertices) of both hemispheres without constant vertices (the medial wall carries no signal)."""
    values = [read_hemisphere(path) for path in hemisphere_paths(recording)]
    return np.concatenate([v[v.std(axis=1) > 0] for v in values]).T


def read_surface(recording: Path, mesh: Path) -> tuple[np.ndarray, Tensor]:
    """(frames, vertices) series of both hemispheres without constant vertices, and the mesh's edges."""
    import nibabel

    series, edges, offset = [], [], 0
    for data_path, mesh_path in zip(hemisphere_paths(recording), hemisphere_paths(mesh)):
        values = read_hemisphere(data_path)
        faces = nibabel.load(mesh_path).agg_data("triangle")
        if faces is None or faces.max() >= len(values):
            raise CohortError(f"{mesh_path}: no triangles for the {len(values)} vertices of {data_path.name}")
        keep = values.std(axis=1) > 0  # the medial wall carries no signal
        index = np.full(len(values), -1)
        index[keep] = np.arange(keep.sum()) + offset
        pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        pairs = index[pairs]
        pairs = pairs[(pairs >= 0).all(axis=1)]
        edges.append(np.concatenate([pairs, pairs[:, ::-1]]))  # both directions
        series.append(values[keep].T)
        offset += int(keep.sum())
    unique = np.unique(np.concatenate(edges), axis=0)  # a shared triangle side is one edge
    return np.concatenate(series, axis=1), torch.as_tensor(unique.T.copy(), dtype=torch.long)


def load_recording(config: RecordingTaskConfig) -> NodeTask:
    path = Path(package_path(config.path, "recording.path"))
    if config.source == "parcels":
        if not path.is_dir():
            raise CohortError(f"recording.path: {path} is not a folder (source=parcels reads timeseries.tsv and rois.tsv)")
        series, coords = read_parcels(path)
        edge_index = nearest_edges(coords, config.k)
    else:
        series, edge_index = read_surface(path, Path(package_path(config.mesh, "recording.mesh")))
    needed = config.window * config.n_windows
    if len(series) < needed:
        raise CohortError(f"{path}: {len(series)} frames; the task needs {needed} (recording.window={config.window} x "
                          f"recording.n_windows={config.n_windows}): lower recording.n_windows to at most "
                          f"{len(series) // config.window}")
    if not np.isfinite(series).all():
        frame = int(np.flatnonzero(~np.isfinite(series).all(axis=1))[0])
        raise CohortError(f"{path}: frame {frame} has a missing or infinite value")
    values = torch.as_tensor(series[:needed].T.copy())  # (nodes, frames)
    values = (values - values.mean(1, keepdim=True)) / (values.std(1, keepdim=True) + 1e-6)
    return NodeTask(x=values.view(len(values), config.n_windows, config.window), edge_index=edge_index,
                    token_names=[f"window{t}" for t in range(config.n_windows)], name=path.stem,
                    span_masks=config.mask_span)
