"""From ROI time series to FC matrices to PyG graphs; one construction shared by every model.

Following BLEG (METHODS.md, "Graph per subject"):

.. math::
    r_{ij} = \\mathrm{corr}(x_i, x_j), \\qquad
    (i, j) \\in E \\iff |r_{ij}| \\ge q_{1 - \\rho}\\big(\\{|r_{kl}| : k < l\\}\\big)

with density :math:`\\rho` (default 12%) taken over the off-diagonal pairs of each subject.
Pearson correlation is invariant to a per-ROI affine rescaling, so the paper's min-max
normalisation of the time series leaves FC unchanged and is not repeated here.

Everything is vectorised over a batch of subjects: shapes use B subjects, T time points,
R regions and E edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch_geometric.data import Data

from fmgnn.errors import InputError


@dataclass
class GraphConfig:
    """How a subject's FC becomes a graph.

    Args:
        density: Fraction of the ``R (R - 1) / 2`` region pairs kept as edges (BLEG: 0.12).
        sign: Rank pairs by ``|r|`` (``"abs"``), by ``r`` (``"positive"``) or by ``-r`` (``"negative"``).
        self_loops: Add an ``(i, i)`` edge for every region (BLEG keeps them).
        node_features: ``"fc_row"``: the region's FC row; ``"binary"``: that row thresholded
            like the edges; ``"identity"``: one-hot region index.
        edge_weight: Edge weight ``|r|`` (``"abs"``, safe for GCN normalisation, whose degrees
            must be positive), signed ``r`` (``"signed"``), or none (``"none"``: unweighted).
        memory_mb: Graphs of one split part a training process keeps in memory (``fmgnn.graph_stream``):
            a larger part is read from the cohort file and built a chunk at a time on every pass, its
            training shard shuffled by row group and within chunks. It changes the order of training
            batches when a part outgrows it, so a rerun with another value is refused.
    """

    density: float = 0.12
    sign: Literal["abs", "positive", "negative"] = "abs"
    self_loops: bool = True
    node_features: Literal["fc_row", "binary", "identity"] = "fc_row"
    edge_weight: Literal["abs", "signed", "none"] = "abs"
    memory_mb: float = 512.0

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise InputError(f"graph.density must be in (0, 1], received {self.density}")
        if self.memory_mb <= 0:
            raise InputError(f"graph.memory_mb must be positive, received {self.memory_mb}")


def pearson_fc(timeseries: np.ndarray) -> np.ndarray:
    """Pearson correlation between ROIs: ``(T, R)`` -> ``(R, R)`` or ``(B, T, R)`` -> ``(B, R, R)``.

    A constant ROI (zero variance) has no defined correlation; it gets 0 off the diagonal.
    """
    x = np.asarray(timeseries, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]  # (1, T, R)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1))  # (B, R)
    safe = np.where(norm > 0, norm, 1.0)
    z = x / safe[:, None, :]
    fc = np.einsum("btr,bts->brs", z, z)  # (B, R, R)
    fc[np.broadcast_to((norm == 0)[:, :, None] | (norm == 0)[:, None, :], fc.shape)] = 0.0
    idx = np.arange(fc.shape[-1])
    fc[:, idx, idx] = 1.0
    fc = np.clip(fc, -1.0, 1.0).astype(np.float32)
    return fc[0] if single else fc


def edge_mask(fc: torch.Tensor, config: GraphConfig) -> torch.Tensor:
    """Boolean adjacency ``(B, R, R)`` keeping the strongest ``density`` share of pairs per subject.

    Exactly ``k = round(density * R (R - 1) / 2)`` pairs (at least one) are kept; ties at the
    threshold are broken by pair order, so the result is deterministic. Self-loops added per config.
    """
    b, r, _ = fc.shape
    rows, cols = torch.triu_indices(r, r, offset=1)
    pair_values = fc[:, rows, cols]  # (B, R(R-1)/2)
    score = {"abs": pair_values.abs(), "positive": pair_values, "negative": -pair_values}[config.sign]
    n_pairs = pair_values.shape[1]
    k = max(1, int(round(config.density * n_pairs)))
    # The k largest per subject, ties at the threshold taken in pair order (what a stable descending sort
    # keeps; topk's tie order is unspecified): a selection, O(pairs), not a sort.
    threshold = score.kthvalue(n_pairs - k + 1, dim=1, keepdim=True).values  # (B, 1): the k-th largest
    above = score > threshold
    ties = score == threshold
    room = k - above.sum(1, keepdim=True)  # threshold values still to keep
    keep = above | (ties & (ties.cumsum(1) <= room))
    adjacency = torch.zeros((b, r, r), dtype=torch.bool)
    adjacency[:, rows, cols] = keep
    adjacency = adjacency | adjacency.transpose(1, 2)
    if config.self_loops:
        adjacency[:, torch.arange(r), torch.arange(r)] = True
    return adjacency


def node_features(fc: torch.Tensor, adjacency: torch.Tensor, config: GraphConfig) -> torch.Tensor:
    """Node features ``(B, R, F)`` with ``F = R``."""
    b, r, _ = fc.shape
    if config.node_features == "fc_row":
        return fc.clone()
    if config.node_features == "binary":
        return adjacency.to(fc.dtype)
    return torch.eye(r, dtype=fc.dtype).expand(b, r, r).clone()


def build_graphs(fc: np.ndarray | torch.Tensor, labels: np.ndarray | None, config: GraphConfig) -> list[Data]:
    """A batch of FC matrices ``(B, R, R)`` -> ``B`` PyG graphs with ``x``, ``edge_index``, ``edge_weight``, ``y``."""
    fc_t = torch.as_tensor(np.asarray(fc), dtype=torch.float32)
    if fc_t.ndim != 3 or fc_t.shape[1] != fc_t.shape[2]:
        raise ValueError(f"fc must have shape (B, R, R), received {tuple(fc_t.shape)}")
    adjacency = edge_mask(fc_t, config)  # (B, R, R)
    x = node_features(fc_t, adjacency, config)  # (B, R, F)
    # Every subject's edges at once, in row-major order within each subject (what nonzero() per subject gives).
    subject, source, target = adjacency.nonzero(as_tuple=True)  # (sum E,)
    weights = fc_t[subject, source, target]
    if config.edge_weight == "abs":
        weights = weights.abs()
    counts = torch.bincount(subject, minlength=fc_t.shape[0]).tolist()
    edges = torch.stack([source, target]).split(counts, dim=1)
    weights = weights.split(counts)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long) if labels is not None else None
    graphs = []
    for i in range(fc_t.shape[0]):  # one Data per subject
        data = Data(x=x[i], edge_index=edges[i].contiguous(), num_nodes=fc_t.shape[1])
        if config.edge_weight != "none":
            data.edge_weight = weights[i]
        if y is not None:
            data.y = y[i:i + 1].clone()
        graphs.append(data)
    return graphs
