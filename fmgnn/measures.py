"""Graph-theory measures of a batch of brain graphs, vectorised over subjects (no per-subject networkx).

Inputs are binary adjacencies ``A`` of shape (B, R, R) without self-loops (the thresholded FC
graph) and, for strengths, the FC weights. Shapes use B subjects, R regions, K the largest degree.

.. math::
    C_i = \\frac{(A^3)_{ii}}{k_i (k_i - 1)}, \\qquad
    E_{glob} = \\frac{1}{R (R - 1)} \\sum_{i \\ne j} \\frac{1}{d_{ij}}, \\qquad
    E_{loc} = \\frac{1}{R} \\sum_i E_{glob}(G[N(i)]), \\qquad
    Q = \\frac{1}{2m} \\sum_{ij} \\Big(A_{ij} - \\frac{k_i k_j}{2m}\\Big) \\delta(c_i, c_j)

Distances come from breadth-first search as boolean matrix products; the characteristic path
length averages the finite distances (disconnected pairs are left out, and their share is
reported). Communities maximise Q approximately: the leading eigenvectors of the modularity matrix
are clustered (vector partitioning, Newman 2006) for 2..``max_communities`` groups and the
partition with the highest Q is kept; Q itself is exact for the partition returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GraphMeasures:
    """Per-subject measures of a batch. Node-level arrays are (B, R); scalars are (B,)."""

    degree: np.ndarray
    strength: np.ndarray
    clustering: np.ndarray
    local_efficiency: np.ndarray
    global_efficiency: np.ndarray
    characteristic_path_length: np.ndarray
    disconnected_pair_fraction: np.ndarray
    modularity: np.ndarray
    communities: np.ndarray  # (B, R) int, community index per region


def hop_counts(adjacency: torch.Tensor) -> torch.Tensor:
    """Ordered pairs at each distance: (..., H) where [..., h - 1] counts pairs exactly h hops apart.

    Breadth-first search from every node at once as boolean matrix products on (..., R, R).
    Efficiency and path length need only these counts, not the distance matrix.
    """
    a = adjacency.to(torch.float32)
    r = a.shape[-1]
    reached = torch.eye(r, dtype=torch.bool).expand_as(adjacency).clone()
    frontier = reached.to(torch.float32)
    counts = []
    for _ in range(1, r):
        new = ((frontier @ a) > 0) & ~reached  # (..., R, R): reached for the first time at this hop
        n_new = new.sum(dim=(-1, -2))  # (...,)
        if not bool(n_new.any()):
            break
        counts.append(n_new)
        reached |= new
        frontier = new.to(torch.float32)
    if not counts:
        return torch.zeros(adjacency.shape[:-2] + (1,), dtype=torch.long)
    return torch.stack(counts, dim=-1)


def _efficiency(counts: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mean of 1/d over the n (n - 1) ordered pairs, from hop counts (..., H)."""
    hops = torch.arange(1, counts.shape[-1] + 1, dtype=torch.float64)
    pairs = (n * (n - 1)).to(torch.float64)
    return (counts.to(torch.float64) / hops).sum(-1) / pairs.clamp(min=1)


def local_efficiency(adjacency: torch.Tensor, bucket_sizes: tuple[int, ...] = (8, 16, 24, 32, 48, 64)) -> torch.Tensor:
    """Efficiency of each node's neighbourhood subgraph, (B, R); networkx's ``local_efficiency`` averages it.

    Neighbourhoods are grouped by degree and each group is padded only to its own bucket size,
    since padding every node to the largest degree multiplies the work by (K / mean degree)^3.
    """
    b, r, _ = adjacency.shape
    flat = adjacency.reshape(b * r, r)  # (B*R, R): row of node i of subject s
    subject = torch.arange(b).repeat_interleave(r)  # (B*R,)
    degree = flat.sum(-1)  # (B*R,)
    k_max = max(int(degree.max()), 1)
    # Neighbours of each node first (stable sort keeps them in region order).
    order = torch.sort(flat.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :k_max]  # (B*R, K)
    result = torch.zeros(b * r, dtype=torch.float64)
    sizes = sorted({s for s in bucket_sizes if s < k_max} | {k_max})
    lower = 1  # nodes with degree < 2 have no pairs: efficiency 0
    for size in sizes:
        members = torch.nonzero((degree > lower) & (degree <= size)).flatten()  # nodes in this bucket
        lower = size
        if members.numel() == 0:
            continue
        neighbours = order[members, :size]  # (M, k)
        valid = torch.arange(size) < degree[members, None]  # (M, k)
        sub = adjacency[subject[members, None, None], neighbours[:, :, None], neighbours[:, None, :]]  # (M, k, k)
        sub &= valid[:, :, None] & valid[:, None, :]
        result[members] = _efficiency(hop_counts(sub), degree[members]).to(result.dtype)
    return result.reshape(b, r)


def modularity(adjacency: torch.Tensor, communities: torch.Tensor) -> torch.Tensor:
    """Newman's Q (B,) of binary graphs (B, R, R) for a partition (B, R)."""
    a = adjacency.to(torch.float64)
    degree = a.sum(-1)  # (B, R)
    two_m = degree.sum(-1)  # (B,)
    safe = two_m.clamp(min=1)[:, None, None]
    b_matrix = a - degree[:, :, None] * degree[:, None, :] / safe  # (B, R, R)
    same = communities[:, :, None] == communities[:, None, :]
    q = (b_matrix * same).sum(dim=(-1, -2)) / two_m.clamp(min=1)
    return torch.where(two_m > 0, q, torch.zeros(()))


def _modularity_matrix(adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B = A - k k^T / 2m (B, R, R) and 2m (B,) of binary graphs."""
    a = adjacency.to(torch.float64)
    degree = a.sum(-1)  # (B, R)
    two_m = degree.sum(-1).clamp(min=1)  # (B,)
    return a - degree[:, :, None] * degree[:, None, :] / two_m[:, None, None], two_m


def _q(b_matrix: torch.Tensor, two_m: torch.Tensor, labels: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Q (B,) from a precomputed modularity matrix: sum((B S) * S) / 2m with one-hot S (B, R, k)."""
    member = torch.nn.functional.one_hot(labels, n_groups).to(b_matrix.dtype)
    return ((b_matrix @ member) * member).sum(dim=(-1, -2)) / two_m


def spectral_communities(adjacency: torch.Tensor, max_communities: int = 8, n_iter: int = 10,
                         seed: int = 0) -> torch.Tensor:
    """Communities (B, R) by clustering leading modularity eigenvectors; the best Q over 2..max groups."""
    b_matrix, two_m = _modularity_matrix(adjacency)
    b, r, _ = b_matrix.shape
    # The eigenvectors only guide the search, so float32 is enough; Q itself is computed in float64.
    values, vectors = torch.linalg.eigh(b_matrix.to(torch.float32))  # ascending eigenvalues
    p = min(max_communities - 1, r - 1)
    lead_values = values[:, -p:].clamp(min=0)  # (B, p)
    embedding = vectors[:, :, -p:] * lead_values.sqrt()[:, None, :]  # (B, R, p): vector partitioning
    generator = torch.Generator().manual_seed(seed)
    best = torch.zeros((b, r), dtype=torch.long)
    best_q = _q(b_matrix, two_m, best, max_communities)
    for n_groups in range(2, max_communities + 1):
        labels = _kmeans(embedding, n_groups, n_iter, generator)
        q = _q(b_matrix, two_m, labels, max_communities)
        better = q > best_q
        best[better], best_q[better] = labels[better], q[better]
    return _relabel(_refine(b_matrix, two_m, best, best_q, max_communities, generator))


def _refine(b_matrix: torch.Tensor, two_m: torch.Tensor, labels: torch.Tensor, q: torch.Tensor,
            n_groups: int, generator: torch.Generator, n_iter: int = 30) -> torch.Tensor:
    """Greedy node moves: a random half of the nodes joins its best community; kept where Q rises."""
    labels, q = labels.clone(), q.clone()
    self_term = torch.diagonal(b_matrix, dim1=-2, dim2=-1)[..., None]  # (B, R, 1)
    for _ in range(n_iter):
        member = torch.nn.functional.one_hot(labels, n_groups).to(b_matrix.dtype)  # (B, R, k)
        gain = b_matrix @ member - self_term * member  # (B, R, k): tie of node i to community c, without i
        movers = torch.rand(labels.shape, generator=generator) < 0.5
        proposal = torch.where(movers, gain.argmax(-1), labels)
        new_q = _q(b_matrix, two_m, proposal, n_groups)
        better = new_q > q + 1e-12
        if not bool(better.any()):
            break
        labels[better], q[better] = proposal[better], new_q[better]
    return labels


def _kmeans(x: torch.Tensor, k: int, n_iter: int, generator: torch.Generator) -> torch.Tensor:
    """Batched k-means on (B, R, p) points, k-means++-free: centres start at random distinct points."""
    b, r, _ = x.shape
    start = torch.stack([torch.randperm(r, generator=generator)[:k] for _ in range(b)])  # (B, k)
    centres = torch.gather(x, 1, start[..., None].expand(-1, -1, x.shape[-1]))  # (B, k, p)
    labels = torch.zeros((b, r), dtype=torch.long)
    for _ in range(n_iter):
        labels = torch.cdist(x, centres).argmin(-1)  # (B, R)
        one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (B, R, k)
        counts = one_hot.sum(1)[..., None]  # (B, k, 1)
        centres = torch.where(counts > 0, one_hot.transpose(1, 2) @ x / counts.clamp(min=1), centres)
    return labels


def _relabel(labels: torch.Tensor) -> torch.Tensor:
    """Number communities 0, 1, ... in order of first appearance, per subject (B, R)."""
    b, r = labels.shape
    k = int(labels.max()) + 1
    present = torch.nn.functional.one_hot(labels, k).bool()  # (B, R, k)
    first = torch.where(present.any(1), present.to(torch.int8).argmax(1), r)  # (B, k) first region of each label
    rank = first.argsort(-1).argsort(-1)  # (B, k): order of first appearance
    return torch.gather(rank, 1, labels)


def graph_measures(adjacency: np.ndarray | torch.Tensor, weights: np.ndarray | torch.Tensor | None = None,
                   max_communities: int = 8) -> GraphMeasures:
    """All measures for binary adjacencies (B, R, R); ``weights`` (B, R, R) give strengths (default: degree)."""
    adj = torch.as_tensor(np.asarray(adjacency)).to(torch.bool)
    if adj.ndim != 3 or adj.shape[1] != adj.shape[2]:
        raise ValueError(f"adjacency must have shape (B, R, R), received {tuple(adj.shape)}")
    r = adj.shape[-1]
    adj = adj & ~torch.eye(r, dtype=torch.bool)  # measures are defined without self-loops
    a = adj.to(torch.float64)
    degree = a.sum(-1)  # (B, R)
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).abs() if weights is not None else a
    strength = (w * a).sum(-1)
    triangles = torch.diagonal(a @ a @ a, dim1=-2, dim2=-1)  # (B, R): 2 x triangles through i
    clustering = torch.where(degree > 1, triangles / (degree * (degree - 1)).clamp(min=1), torch.zeros(()))
    counts = hop_counts(adj).to(torch.float64)  # (B, H)
    hops = torch.arange(1, counts.shape[-1] + 1, dtype=torch.float64)
    n_finite = counts.sum(-1)  # (B,) connected ordered pairs
    path_length = (counts * hops).sum(-1) / n_finite.clamp(min=1)
    communities = spectral_communities(adj, max_communities)
    return GraphMeasures(
        degree=degree.numpy().astype(np.int64),
        strength=strength.numpy(),
        clustering=clustering.numpy(),
        local_efficiency=local_efficiency(adj).numpy(),
        global_efficiency=_efficiency(counts, torch.full((adj.shape[0],), r)).numpy(),
        characteristic_path_length=path_length.numpy(),
        disconnected_pair_fraction=(1 - n_finite / (r * (r - 1))).numpy(),
        modularity=modularity(adj, communities).numpy(),
        communities=communities.numpy(),
    )
