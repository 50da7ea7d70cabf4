"""FIMP task: spatial gene-expression prediction (METHODS.md, "Tasks and metrics").

One graph over all cells: each cell joins its k nearest cells in space. A cell's tokens are its
genes: token g carries the value of gene g, and the model adds a learned embedding per gene (the
position embedding of ``TokenModel``), as scGPT's tokenizer does. A share of each cell's genes is
held out and predicted from the cell's other genes and its neighbours; MSE and R^2 on held-out genes.

Readers for the two datasets in ../shared/data:
- ``bdtnp``: a folder with ``dge.txt`` (tab-separated, a header of gene names, one row per cell) and
  ``geometry.txt`` (``xcoord ycoord zcoord``; row k is cell k; extra rows are ignored);
- ``tangram``: an AnnData ``.h5ad`` file (dense ``X`` cells x genes, ``obs/x``, ``obs/y``), read with h5py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmgnn.config import LocalPath
from fimp.tasks.fmri import nearest_edges
from fimp.tasks.nodes import NodeTask
from fmgnn.cohort import CohortError


@dataclass
class SpatialTaskConfig:
    """Args:
        path: A bdtnp-style folder (dge.txt + geometry.txt) or an AnnData .h5ad file.
        k: Spatial neighbours per cell.
        log1p: log(1 + x) the values first (for counts, as in the tangram file).
        mask_ratio: Share of each cell's genes held out (at least one).
    """

    path: LocalPath = "../shared/data/bdtnp"
    k: int = 8
    log1p: bool = False
    mask_ratio: float = 0.15


def read_bdtnp(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    dge, geometry = folder / "dge.txt", folder / "geometry.txt"
    for path in (dge, geometry):
        if not path.is_file():
            raise CohortError(f"{folder}: no {path.name} (a bdtnp folder holds dge.txt and geometry.txt)")
    genes = dge.read_text().split("\n", 1)[0].split("\t")
    try:
        values = np.loadtxt(dge, delimiter="\t", skiprows=1, dtype=np.float32, ndmin=2)
        coords = np.loadtxt(geometry, skiprows=1, dtype=np.float32, ndmin=2)
    except ValueError as error:  # numpy names the row that does not parse
        raise CohortError(f"{folder}: {error}") from error
    if values.shape[1] != len(genes):
        raise CohortError(f"{dge}: {len(genes)} gene names in the header but {values.shape[1]} values per row")
    if len(coords) < len(values):
        raise CohortError(f"{geometry}: {len(coords)} positions for {len(values)} cells")
    return values, coords[: len(values)], genes


def read_h5ad(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import h5py

    with h5py.File(path, "r") as f:
        if not isinstance(f.get("X"), h5py.Dataset):
            raise CohortError(f"{path}: X is not a dense matrix (sparse AnnData is not supported)")
        values = f["X"][:].astype(np.float32)
        axes = [name for name in ("x", "y", "z") if name in f["obs"]]
        if len(axes) < 2:
            raise CohortError(f"{path}: obs has no x and y columns (cell positions)")
        coords = np.stack([f["obs"][name][:] for name in axes], axis=1).astype(np.float32)
        index = f["var"].attrs.get("_index", "_index")
        genes = [g.decode() if isinstance(g, bytes) else str(g) for g in f["var"][index][:]]
    return values, coords, genes


def load_spatial(config: SpatialTaskConfig) -> NodeTask:
    path = Path(config.path)
    if path.is_dir():
        values, coords, genes = read_bdtnp(path)
    elif path.suffix == ".h5ad" and path.is_file():
        values, coords, genes = read_h5ad(path)
    else:
        raise CohortError(f"{path}: expected a bdtnp folder or an .h5ad file")
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise CohortError(f"{path}: cell {row} has a missing or infinite value")
    if config.log1p:
        values = np.log1p(np.clip(values, 0, None))
    edges = nearest_edges(coords, config.k)
    return NodeTask(x=torch.as_tensor(values).unsqueeze(-1), edge_index=edges, token_names=genes,
                    name=path.stem, standardize=True)
