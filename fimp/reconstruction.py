"""Masked-token reconstruction models: FIMP and the baselines it is compared with, on identical inputs.

Every model reads a batch of nodes with ``f`` tokens of ``w`` values each, ``x`` (N, f, w), and a mask
(N, f) of hidden tokens, and predicts every token's values (N, f, w); losses and metrics use the
hidden tokens only.

- ``fimp``: tokens -> linear embedding (hidden tokens replaced by a learned mask token) + position ->
  ``layers`` FIMP layers (``FIMPFoundationConv``: random = FIMP-base, or a foundation model's
  weights) -> linear decoder.
- ``foundation``: the same embedding, the foundation model on each node alone (no graph), decoder.
- ``mlp``: a node's visible values and mask flags -> MLP, no graph.
- ``gcn``, ``sage``, ``gat``, ``gin``, ``gps``: PyG layers over the same flattened node features.
- ``node_mean``, ``interpolation`` and ``frame_mean``, the trivial rows (nothing trained): every hidden
  value is the mean of the node's visible values; or, reading a node's tokens as consecutive windows of
  one series, the straight line between the last visible time point before the hidden run and the
  first after it (the nearest visible value at either end); or, when all nodes share one time axis (the
  regions of one recording), the training nodes' mean at that time point (the global signal). A model
  that does not beat them has learnt nothing the series' smoothness or the shared signal does not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric import nn as pyg
from torch_geometric.utils import add_remaining_self_loops

from fimp.foundation import FIMPFoundationConv, FinetuneMode, FoundationConfig, apply_finetune

ModelKind = Literal["fimp", "foundation", "mlp", "gcn", "sage", "gat", "gin", "gps", "node_mean", "interpolation",
                    "frame_mean"]
GNN_KINDS = ("gcn", "sage", "gat", "gin", "gps")
TRIVIAL_KINDS = ("node_mean", "interpolation", "frame_mean")


@dataclass
class ReconstructionConfig:
    """Args:
        kind: Which model.
        n_tokens: Tokens per node f.
        token_values: Values per token w.
        fimp_layers: FIMP message-passing layers (each a whole foundation model).
        foundation: The foundation model's shape (hidden, heads, layers, MLP width...).
        gnn_hidden: Width of the baselines' GNN and MLP layers.
        gnn_layers: Depth of the baselines.
        dropout: Dropout of the baselines.
        self_message: How FIMP sees the node itself (the foundation model's reading of its own tokens,
            ``node_outputs``), as the GNN baselines do (GCN's and GAT's self-loops, GIN's and SAGE's
            root terms): ``root``, through its own projection beside the neighbours' mean (see
            ``FIMPFoundationConv``'s ``root``); ``mean``, as a self-loop, one message among the neighbours';
            ``none``, not at all (a hidden token then learns only from neighbours).
        finetune: Which weights of the foundation layers train when they start from a pretrained model
            (``fimp_pretrained``): ``full``, ``frozen`` (FIMP's own projections, the token embedding and
            decoder train), or ``lora`` (low-rank adapters on the attention projections, rank ``lora_r``).
        lora_r: LoRA rank.
        per_token: The token models embed and decode each token position with its own linear map
            (genes: a gene's value means something else in every gene) instead of one shared map
            (fMRI windows, image patches: every token is the same kind of thing).
        position: How the token models tell token positions apart: ``learned``, one vector per position
            (tied to ``n_tokens``); or ``sinusoidal``, the fixed 1-D sine-cosine table of ViTMAE, which
            BrainLM inherits: nothing to learn, so a model pretrained on one number of windows runs on
            recordings of any other.
    """

    kind: ModelKind = "fimp"
    n_tokens: int = 10
    token_values: int = 20
    fimp_layers: int = 1
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    gnn_hidden: int = 256
    gnn_layers: int = 2
    dropout: float = 0.0
    self_message: Literal["root", "mean", "none"] = "root"
    per_token: bool = False
    finetune: FinetuneMode = "full"
    lora_r: int = 8
    position: Literal["learned", "sinusoidal"] = "learned"


class TokenLinear(nn.Module):
    """A linear map of every token (N, f, in) -> (N, f, out): one map for all tokens (``per_token=False``,
    ``nn.Linear``'s weight layout), or its own map per token position."""

    def __init__(self, n_tokens: int, in_features: int, out_features: int, per_token: bool) -> None:
        super().__init__()
        shape = (n_tokens, out_features, in_features) if per_token else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(shape[:-1]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.weight.shape[-1] ** -0.5  # nn.Linear's default initialisation, per token
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return nn.functional.linear(x, self.weight, self.bias)
        return torch.einsum("nfi,foi->nfo", x, self.weight) + self.bias


def sinusoidal_positions(n_positions: int, dim: int) -> Tensor:
    """ViTMAE's 1-D sine-cosine position table (n_positions, dim): sines in the first half, cosines in the
    second, frequencies 1 / 10000^(2i / dim)."""
    if dim % 2:
        raise ValueError(f"a sine-cosine table needs an even width, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class TokenModel(nn.Module):
    """``fimp`` and ``foundation``: token embedding, FIMP layers (or none), token decoder."""

    def __init__(self, config: ReconstructionConfig) -> None:
        super().__init__()
        d = config.foundation.hidden
        self.config = config
        self.embed = TokenLinear(config.n_tokens, config.token_values, d, config.per_token)
        self.mask_token = nn.Parameter(torch.zeros(d))
        if config.position == "learned":
            self.position = nn.Parameter(torch.zeros(config.n_tokens, d))
            nn.init.normal_(self.position, std=0.02)
        else:  # a function of the position, not a weight: kept out of the state dict
            self.register_buffer("position", sinusoidal_positions(config.n_tokens, d), persistent=False)
        n_convs = config.fimp_layers if config.kind == "fimp" else 1
        root = config.kind == "fimp" and config.self_message == "root"
        self.convs = nn.ModuleList(FIMPFoundationConv(config.foundation, root) for _ in range(n_convs))
        if config.kind == "foundation":
            # Alone, the model combines no neighbour messages: the update projection never gets a
            # gradient, which DDP refuses for a trained parameter.
            self.convs[0].update_proj.requires_grad_(False)
        self.decode = TokenLinear(config.n_tokens, d, config.token_values, config.per_token)

    def tokens(self, x: Tensor, mask: Tensor) -> Tensor:
        embedded = self.embed(x)  # (N, f, D)
        embedded = torch.where(mask.unsqueeze(-1), self.mask_token.expand_as(embedded), embedded)
        return embedded + self.position

    def forward(self, x: Tensor, mask: Tensor, edge_index: Tensor) -> Tensor:
        h = self.tokens(x, mask)
        if self.config.kind == "foundation":
            h = self.convs[0].node_outputs(h)  # the foundation model on each node alone
        else:
            if self.config.self_message == "mean":
                edge_index, _ = add_remaining_self_loops(edge_index, num_nodes=h.shape[0])
            for conv in self.convs:
                h = conv(h, edge_index)
        return self.decode(h)  # (N, f, w)


class NodeModel(nn.Module):
    """``mlp`` and the PyG baselines: flattened visible values plus mask flags per node."""

    def __init__(self, config: ReconstructionConfig) -> None:
        super().__init__()
        self.config = config
        f, w, h = config.n_tokens, config.token_values, config.gnn_hidden
        self.inputs = nn.Linear(f * w + f, h)
        self.layers = nn.ModuleList(self._layer(config.kind, h) for _ in range(config.gnn_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(config.gnn_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(h, f * w)

    @staticmethod
    def _layer(kind: str, h: int) -> nn.Module:
        if kind == "mlp":
            return nn.Linear(h, h)
        if kind == "gcn":
            return pyg.GCNConv(h, h)
        if kind == "sage":
            return pyg.SAGEConv(h, h)
        if kind == "gat":
            return pyg.GATConv(h, h // 4, heads=4)
        if kind == "gin":
            return pyg.GINConv(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h)))
        if kind == "gps":  # local message passing plus global attention over the graph's nodes
            return pyg.GPSConv(h, pyg.GINConv(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))), heads=4)
        raise ValueError(f"unknown baseline {kind!r}")

    def forward(self, x: Tensor, mask: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        n, f, w = x.shape
        visible = x.masked_fill(mask.unsqueeze(-1), 0.0).reshape(n, f * w)
        h = self.inputs(torch.cat([visible, mask.float()], dim=1))  # (N, hidden)
        for layer, norm in zip(self.layers, self.norms):
            if self.config.kind == "mlp":
                update = layer(h)
            elif self.config.kind == "gps":
                update = layer(h, edge_index, batch=batch)
            else:
                update = layer(h, edge_index)
            h = norm(h + self.dropout(torch.nn.functional.gelu(update)))
        return self.output(h).view(n, f, w)


class TrivialModel(nn.Module):
    """The trivial rows: predictions from the node's own visible values, or ``frame_values``, the training
    nodes' mean per token (set by the job from the training part), no parameters."""

    def __init__(self, config: ReconstructionConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("frame_values", torch.zeros(config.n_tokens, config.token_values))

    def forward(self, x: Tensor, mask: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        n, f, w = x.shape
        if self.config.kind == "frame_mean":
            return self.frame_values.expand(n, f, w)
        visible = (~mask).unsqueeze(-1).expand(n, f, w).reshape(n, f * w)  # (N, T) time points shown
        series = x.reshape(n, f * w)
        if self.config.kind == "node_mean":
            mean = (series * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
            return mean.expand(n, f * w).reshape(n, f, w)
        t = torch.arange(f * w, device=x.device).expand(n, f * w)
        before = torch.where(visible, t, -1).cummax(dim=1).values  # the last visible point at or before t
        after = torch.where(visible, t, f * w).flip(1).cummin(dim=1).values.flip(1)  # the first at or after
        has_before, has_after = before >= 0, after < f * w
        left = series.gather(1, before.clamp(min=0))
        right = series.gather(1, after.clamp(max=f * w - 1))
        share = (t - before).float() / (after - before).clamp(min=1).float()
        line = left + share * (right - left)
        line = torch.where(has_before & has_after, line, torch.where(has_before, left, right))
        return line.reshape(n, f, w)


def build_model(config: ReconstructionConfig) -> nn.Module:
    if config.kind in TRIVIAL_KINDS:
        return TrivialModel(config)
    return TokenModel(config) if config.kind in ("fimp", "foundation") else NodeModel(config)


def apply_model_finetune(model: nn.Module, config: ReconstructionConfig) -> nn.Module:
    """``config.finetune`` on every FIMP layer of a token model, after its pretrained weights are loaded
    (LoRA renames the projections it wraps)."""
    if isinstance(model, TokenModel) and config.finetune != "full":
        for index, conv in enumerate(model.convs):
            model.convs[index] = apply_finetune(conv, config.finetune, lora_r=config.lora_r, lora_alpha=2 * config.lora_r)
    return model


def masked_mse(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return torch.mean((predicted[mask] - target[mask]) ** 2)
