"""Planted-structure node tasks: what a reconstruction model must be able to learn (capability tests).

One random spatial graph (each node joins its k nearest nodes), one-value tokens, as in spatial gene
expression. The first ``n_sources`` token positions are never hidden; each node hides ``n_hidden`` of
the others, chosen so that no in-neighbour of the node hides the same position (the neighbour-copy
target is then fully observed, and R^2 can reach 1). Every visible value is i.i.d. N(0, 1); a hidden
token's value is planted:

- ``neighbour_copy``: the mean of the same position over the node's in-neighbours;
- ``within_node``: a fixed linear combination (coefficients of both signs, one row per position) of
  the node's own source tokens;
- ``both``: the sum of the two, each scaled to unit variance, over sqrt(2).

The GCN solves the first, the MLP the second, and FIMP, which sees both its own tokens and its
neighbours', must solve all three.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from fimp.tasks.fmri import nearest_edges
from fimp.tasks.nodes import NodeTask

PlantedKind = Literal["neighbour_copy", "within_node", "both"]


def conflict_free_masks(edge_index: torch.Tensor, n_nodes: int, n_tokens: int, n_sources: int, n_hidden: int,
                        rng: np.random.Generator) -> torch.Tensor:
    """Hidden positions (N, f) such that no edge joins two nodes hiding the same position."""
    neighbours: list[set[int]] = [set() for _ in range(n_nodes)]
    for source, target in edge_index.t().tolist():
        neighbours[source].add(target)
        neighbours[target].add(source)
    masks = torch.zeros(n_nodes, n_tokens, dtype=torch.bool)
    for node in rng.permutation(n_nodes):
        taken = masks[sorted(neighbours[node])].any(0) if neighbours[node] else torch.zeros(n_tokens, dtype=torch.bool)
        free = [p for p in range(n_sources, n_tokens) if not taken[p]]
        if len(free) < n_hidden:
            raise ValueError(f"node {node}: only {len(free)} free positions; use more tokens or fewer neighbours")
        masks[node, rng.choice(free, n_hidden, replace=False)] = True
    return masks


def planted_task(kind: PlantedKind, n_nodes: int = 2000, n_tokens: int = 24, n_sources: int = 8, n_hidden: int = 2,
                 k: int = 4, seed: int = 0) -> NodeTask:
    rng = np.random.default_rng(seed)
    points = torch.as_tensor(rng.random((n_nodes, 2)), dtype=torch.float32)
    edge_index = nearest_edges(points, k)
    masks = conflict_free_masks(edge_index, n_nodes, n_tokens, n_sources, n_hidden, rng)
    values = torch.as_tensor(rng.standard_normal((n_nodes, n_tokens)), dtype=torch.float32)

    neighbour_mean = torch.zeros_like(values).index_add(0, edge_index[1], values[edge_index[0]])
    neighbour_mean = neighbour_mean / torch.bincount(edge_index[1], minlength=n_nodes).clamp(min=1)[:, None].float()
    coefficients = torch.as_tensor(rng.standard_normal((n_sources, n_tokens)), dtype=torch.float32) / n_sources ** 0.5
    within = values[:, :n_sources] @ coefficients  # (N, f): unit variance per position
    if kind == "neighbour_copy":
        planted = neighbour_mean
    elif kind == "within_node":
        planted = within
    elif kind == "both":
        planted = (neighbour_mean * k ** 0.5 + within) / 2 ** 0.5
    else:
        raise ValueError(f"unknown planted task {kind!r}")
    x = torch.where(masks, planted, values)
    names = [f"token{p}" for p in range(n_tokens)]
    return NodeTask(x=x.unsqueeze(-1), edge_index=edge_index, token_names=names, name=f"planted_{kind}", masks=masks)
