"""Reconstruction on one large graph (cells, images): node splits, masks, scaling and neighbourhood batches.

The graph is transductive: every node is an input, but a validation or test node's held-out tokens
are hidden in every forward pass, training included, and only training nodes' held-out tokens are
ever a loss target. Token scaling (per token: mean and std) is fitted on training nodes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fimp.tasks.fmri import window_mask


@dataclass
class NodeTask:
    """Args:
        x: Token values of every node, (N, f, w).
        edge_index: Edges (2, E), source = neighbour, target = node.
        token_names: What token t is (a gene name, a patch position).
        name: The dataset's name, for reports.
        standardize: Scale each token's values with the training nodes' mean and std.
        masks: Fixed held-out tokens (N, f) when the task defines them (images: the graph was built
            from the visible patches); None: drawn per seed by ``fixed_masks``.
        shape: How a node's tokens tile back into its picture (images: patch grid and patch size).
        span_masks: Drawn masks hide one run of consecutive tokens per node (the windows of a recording).
    """

    x: Tensor
    edge_index: Tensor
    token_names: list[str]
    name: str
    standardize: bool = False
    masks: Tensor | None = None
    shape: dict = field(default_factory=dict)
    span_masks: bool = False

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


def split_nodes(n: int, seed: int, val_fraction: float, test_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """Random train / validation / test indices, fixed by ``seed``; a part of a positive fraction has at least one
    index, and ``test_fraction=0`` none (pretraining has no test part)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n))
    return sorted(order[n_test + n_val:]), sorted(order[n_test:n_test + n_val]), sorted(order[:n_test])


def scale_tokens(x: Tensor, train: list[int]) -> Tensor:
    """Standardise each (token, value) column with the training nodes' statistics only."""
    reference = x[train]
    mean, std = reference.mean(0, keepdim=True), reference.std(0, keepdim=True)
    return (x - mean) / std.clamp_min(1e-6)


def held_out_masks(task: NodeTask, ratio: float, seed: int) -> Tensor:
    if task.masks is not None:
        return task.masks
    return window_mask(task.num_nodes, task.x.shape[1], ratio, torch.Generator().manual_seed(seed), task.span_masks)


@dataclass
class Neighbourhood:
    """The subgraph a batch of target nodes needs: ``nodes`` (global ids), edges relabelled to it, and
    the positions of the targets inside it."""

    nodes: Tensor
    edge_index: Tensor
    targets: Tensor


def neighbourhood(edge_index: Tensor, targets: Tensor, hops: int, num_nodes: int) -> Neighbourhood:
    """What ``hops`` message-passing layers read to compute ``targets``: nodes within ``hops`` in-hops,
    and only the edges into nodes within ``hops - 1`` (an edge into an outermost node would change
    nothing the targets see, and with many neighbours most edges are such)."""
    device = edge_index.device  # every index tensor where the graph is
    targets = targets.to(device)
    keep = torch.zeros(edge_index.shape[1], dtype=torch.bool, device=device)
    reached = torch.zeros(num_nodes, dtype=torch.bool, device=device)
    reached[targets] = True
    frontier = reached.clone()
    for _ in range(hops):
        incoming = frontier[edge_index[1]] & ~keep
        keep |= incoming
        frontier = torch.zeros(num_nodes, dtype=torch.bool, device=device)
        frontier[edge_index[0, incoming]] = True
        frontier &= ~reached
        reached |= frontier
    # Targets first, in their order, so that their outputs are the first rows.
    others = torch.nonzero(reached, as_tuple=True)[0]
    others = others[~torch.isin(others, targets)]
    nodes = torch.cat([targets, others])
    relabel = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
    relabel[nodes] = torch.arange(len(nodes), device=device)
    return Neighbourhood(nodes, relabel[edge_index[:, keep]], torch.arange(len(targets), device=device))
