"""A GCN graph classifier: the GNN baseline of every classification task.

.. math::
    H^{(l+1)} = \\mathrm{ReLU}\\big(\\mathrm{BN}(\\hat D^{-1/2} \\hat A \\hat D^{-1/2} H^{(l)} W^{(l)})\\big),
    \\qquad \\hat y = \\mathrm{softmax}\\big(W_o \\, \\mathrm{pool}(H^{(L)})\\big)

(Kipf and Welling, 2017) with the subject's FC graph as :math:`\\hat A` (self-loops included by
the graph builder, so GCNConv adds none) and mean or max pooling over the R regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool


@dataclass
class GCNConfig:
    """Model and optimisation settings of the GCN baseline.

    Args:
        hidden: Width of every GCN layer.
        n_layers: Number of GCN layers.
        dropout: Dropout before the head.
        readout: Pooling over regions.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: Maximum epochs.
        batch_size: Graphs per batch (per worker).
        patience: Stop after this many epochs without a better validation loss.
    """

    hidden: int = 64
    n_layers: int = 2
    dropout: float = 0.5
    readout: Literal["mean", "max"] = "mean"
    lr: float = 1e-3
    weight_decay: float = 1e-3
    epochs: int = 60
    batch_size: int = 16
    patience: int = 20


class GCNClassifier(nn.Module):
    """GCN layers, pooling and a linear head.

    Shapes: ``x`` (N, F), ``edge_index`` (2, E), ``edge_weight`` (E,), ``batch`` (N,) ->
    logits (G, C).
    """

    def __init__(self, in_channels: int, n_classes: int, config: GCNConfig) -> None:
        super().__init__()
        self.config = config
        widths = [in_channels] + [config.hidden] * config.n_layers
        self.convs = nn.ModuleList(GCNConv(a, b, add_self_loops=False) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(config.hidden) for _ in range(config.n_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, n_classes)
        self.pool = global_mean_pool if config.readout == "mean" else global_max_pool

    def reset_parameters(self) -> None:
        for module in [*self.convs, *self.norms, self.head]:
            module.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None, batch: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x, edge_index, edge_weight)))  # (N, hidden)
        pooled = self.pool(x, batch)  # (G, hidden)
        return self.head(self.dropout(pooled))  # (G, C)
