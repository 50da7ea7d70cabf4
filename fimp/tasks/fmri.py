"""FIMP task: fMRI recording reconstruction (METHODS.md, "Tasks and metrics").

One graph per scan: nodes are the R regions, each carrying its time series cut into f windows of w
time points (BrainLM's tokens: 20 points per window); edges join each region to its k most
correlated regions (|r| of the scan's FC; a kNN over coordinates when the cohort has them). A
share of each region's windows is masked and reconstructed; MSE and R^2 count masked windows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from fmgnn.cohort import Cohort, CohortError


@dataclass
class FMRITaskConfig:
    """Args:
        window: Time points per token (BrainLM: 20).
        n_windows: Windows per region (f); the first ``window * n_windows`` time points are used.
        k: Neighbours per region in the kNN graph.
        graph: ``fc`` (|r| of the scan) or ``coords`` (Euclidean, needs roi_coords).
        mask_ratio: Share of each region's windows masked (at least one).
        mask_span: Mask one run of consecutive windows per region (BrainLM-style) instead of windows
            drawn at random: a hidden window then has no visible window on both sides to interpolate from.
        normalize: z-score each region's series over the used time points (per scan, no fitting).
    """

    window: int = 20
    n_windows: int = 10
    k: int = 8
    graph: str = "fc"
    mask_ratio: float = 0.2
    mask_span: bool = False
    normalize: bool = True


def knn_edges(similarity: Tensor, k: int) -> Tensor:
    """Edges (2, R k) from each region's k most similar others (source = neighbour, target = region)."""
    r = similarity.shape[0]
    scores = similarity.clone()
    scores.fill_diagonal_(float("-inf"))
    neighbours = scores.topk(min(k, r - 1), dim=1).indices  # (R, k)
    target = torch.arange(r).repeat_interleave(neighbours.shape[1])
    return torch.stack([neighbours.reshape(-1), target])


def nearest_edges(points: np.ndarray | Tensor, k: int) -> Tensor:
    """Edges (2, N k) from each point's k nearest others in space (source = neighbour, target = point).

    The edges of ``knn_edges(-cdist(points, points), k)`` without the N x N distance matrix: a KD-tree
    query, O(N k) memory, for recordings of many vertices and tissues of many cells."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    k = min(k, n - 1)
    _, found = cKDTree(points).query(points, k=k + 1)  # (N, k + 1), each point among its own nearest
    found = found.reshape(n, k + 1)
    own = found == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True  # a point with k others at distance 0 before it: drop the farthest
    neighbours = found[~own].reshape(n, k)
    target = np.repeat(np.arange(n), k)
    return torch.as_tensor(np.stack([neighbours.reshape(-1), target]), dtype=torch.long)


def scan_graph(series: np.ndarray, config: FMRITaskConfig, coords: np.ndarray | None = None,
               where: str = "scan") -> Data:
    """``Data`` with ``x`` (R, f, w) windows and kNN ``edge_index``."""
    needed = config.window * config.n_windows
    t, r = series.shape
    if t < needed:
        raise CohortError(f"{where}: {t} time points, the task needs {needed} (window x n_windows)")
    # A copy: the series may be a read-only view of the cohort's Arrow buffer.
    values = torch.tensor(series[:needed].T, dtype=torch.float32)  # (R, T)
    if config.normalize:
        values = (values - values.mean(1, keepdim=True)) / (values.std(1, keepdim=True) + 1e-6)
    if config.graph == "coords":
        if coords is None:
            raise CohortError(f"{where}: graph=coords needs roi_coords in the cohort metadata")
        points = torch.as_tensor(np.asarray(coords), dtype=torch.float32)
        similarity = -torch.cdist(points, points)
    else:
        similarity = torch.corrcoef(values).abs().nan_to_num(0.0)
    return Data(x=values.view(r, config.n_windows, config.window), edge_index=knn_edges(similarity, config.k),
                num_nodes=r)


READ_CHUNK = 256  # scans read at a time: one row group of an ingested cohort


def load_scans(cohort: Cohort, indices: list[int], config: FMRITaskConfig) -> list[Data]:
    """The graphs of the scans ``indices``, read a chunk of rows at a time (never the whole cohort)."""
    graphs = []
    for start in range(0, len(indices), READ_CHUNK):
        chunk = [int(i) for i in indices[start:start + READ_CHUNK]]
        for i, series in zip(chunk, cohort.timeseries_rows(chunk)):
            if series is None:
                raise CohortError(f"{cohort.path}: scan {cohort.scan_ids()[i]} has no time series (FC only); "
                                  "the reconstruction task needs time series")
            graphs.append(scan_graph(series, config, cohort.metadata.roi_coords,
                                     f"{cohort.path}: scan {cohort.scan_ids()[i]}"))
    return graphs


def window_mask(n_nodes: int, n_windows: int, ratio: float, generator: torch.Generator,
                span: bool = False) -> Tensor:
    """(N, f) booleans, True where a window is hidden; every node hides at least one window: a random
    set of windows, or (``span``) one run of consecutive windows at a random start."""
    n_masked = max(1, round(ratio * n_windows))
    if span:
        start = torch.randint(0, n_windows - n_masked + 1, (n_nodes, 1), generator=generator)
        position = torch.arange(n_windows)
        return (position >= start) & (position < start + n_masked)
    order = torch.rand(n_nodes, n_windows, generator=generator).argsort(dim=1)
    return order < n_masked


def reconstruction_sums(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """What MSE and R^2 over the masked windows are made of, as float64 sums that add across batches and
    workers: squared error, count, sum and sum of squares of the targets. (N, f, w) predictions and
    targets, (N, f) mask."""
    p, y = predicted[mask].double(), target[mask].double()  # (M, w)
    return torch.stack([((p - y) ** 2).sum(), torch.tensor(float(y.numel()), dtype=torch.float64,
                                                            device=y.device), y.sum(), (y ** 2).sum()])


def metrics_from_sums(sums: Tensor) -> dict[str, float]:
    """MSE and R^2 from ``reconstruction_sums`` (summed over batches and workers)."""
    squared_error, count, total, squares = sums.tolist()
    spread = squares - total ** 2 / count if count else 0.0  # sum of squares about the mean
    return {"mse": squared_error / count if count else float("nan"),
            "r2": 1.0 - squared_error / spread if spread > 0 else float("nan")}


def reconstruction_metrics(predicted: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """MSE and R^2 over the masked windows: (N, f, w) predictions and targets, (N, f) mask."""
    return metrics_from_sums(reconstruction_sums(predicted, target, mask))
