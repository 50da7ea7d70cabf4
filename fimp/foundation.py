"""FIMP with a whole foundation model: every transformer layer runs with cross-attention between nodes.

For the message from node :math:`j` to node :math:`i`, layer :math:`l` of the foundation model keeps its
pretrained :math:`W_Q, W_K, W_V, W_O`, LayerNorms and MLP, but its queries come from the message's own
hidden state :math:`h^{l-1}_{j \\to i}` (starting from :math:`i`'s tokens) and its keys and values from
:math:`j`'s hidden states :math:`Z^{l-1}_j` of the foundation model run on :math:`j` alone:

.. math::
    h^0_{j \\to i} = X_i, \\quad
    h^l_{j \\to i} = \\mathrm{Layer}_l\\big(h^{l-1}_{j \\to i};\\ \\mathrm{keys/values}\\ Z^{l-1}_j\\big),
    \\quad Z^l_j = \\mathrm{Layer}_l(Z^{l-1}_j;\\ Z^{l-1}_j), \\quad Z^0_j = X_j

    H_{j \\to i} = \\mathrm{LN}(h^L_{j \\to i}), \\qquad
    X_i' = \\Big(X_i + \\tfrac{1}{|\\mathcal{N}(i)|} \\textstyle\\sum_{j} H_{j \\to i}\\Big) W_P
           \\;\\big[+\\ \\mathrm{LN}(Z^L_i)\\, W_R\\big]

:math:`Z_j` and every layer's keys and values depend on one node only: they are computed once per node
and gathered per edge; queries, attention and MLP run per edge, in chunks. A self-loop's message is
therefore exactly the foundation model's own output for that node. With ``root=True`` the node's own
reading :math:`\\mathrm{LN}(Z^L_i)` enters through its own projection :math:`W_R` (a root term, as in
GraphSAGE or GIN) instead of as one message among the neighbours': a message is the same function of
(i, j) for every edge, so inside the mean the node's own reading cannot be told from a neighbour's, and
what the node's tokens say about its hidden ones is averaged with what the neighbours' say about
theirs. FIMP-base is this layer from
random weights. Pre-LN (ViT, ViTMAE/BrainLM, ``norm_first`` TransformerEncoder) and post-LN (BERT,
scGPT's default) layers are both supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class FoundationConfig:
    """Args:
        hidden: Token width D.
        heads: Attention heads (divide D).
        layers: Transformer layers L.
        intermediate: MLP width.
        norm_first: Pre-LN (ViT, BrainLM) or post-LN (BERT).
        layer_norm_eps: LayerNorm epsilon (ViT: 1e-12, torch: 1e-5).
        activation: MLP activation.
        final_norm: A LayerNorm after the last layer (ViT's ``layernorm``).
        dropout: Attention dropout in training.
        edge_chunk_size: Edges per batch of per-edge work.
    """

    hidden: int = 64
    heads: int = 4
    layers: int = 2
    intermediate: int = 256
    norm_first: bool = True
    layer_norm_eps: float = 1e-12
    activation: Literal["gelu", "relu"] = "gelu"
    final_norm: bool = True
    dropout: float = 0.0
    edge_chunk_size: int = 2048


class FoundationLayer(nn.Module):
    """One transformer layer whose attention may read keys and values from another sequence."""

    def __init__(self, config: FoundationConfig) -> None:
        super().__init__()
        d = config.hidden
        self.config = config
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.intermediate)
        self.fc2 = nn.Linear(config.intermediate, d)

    def _heads(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.config.heads, d // self.config.heads).transpose(1, 2)  # (B, H, S, D/H)

    def keys_values(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a node's hidden states (N, S, D) -> (N, H, S, D/H) each."""
        z = self.norm1(z) if self.config.norm_first else z
        return self._heads(self.k_proj(z)), self._heads(self.v_proj(z))

    def queries(self, h: Tensor) -> Tensor:
        """Queries of hidden states (B, S, D) -> (B, H, S, D/H)."""
        return self._heads(self.q_proj(self.norm1(h) if self.config.norm_first else h))

    def forward(self, h: Tensor, k: Tensor, v: Tensor, q: Tensor | None = None) -> Tensor:
        """Queries from ``h`` (B, S, D) (or given, ``q``) over keys/values (B, H, S', D/H) -> (B, S, D)."""
        activation = F.gelu if self.config.activation == "gelu" else F.relu
        q = self.queries(h) if q is None else q
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.config.dropout if self.training else 0.0)  # (B, H, S, D/H)
        b, _, s, _ = attended.shape
        h = h + self.o_proj(attended.transpose(1, 2).reshape(b, s, -1))
        if self.config.norm_first:
            return h + self.fc2(activation(self.fc1(self.norm2(h))))
        h = self.norm1(h)
        return self.norm2(h + self.fc2(activation(self.fc1(h))))

    def self_forward(self, z: Tensor) -> Tensor:
        """The ordinary layer: self-attention of a node's own tokens."""
        return self(z, *self.keys_values(z))


class FIMPFoundationConv(nn.Module):
    """Shapes: tokens (N, S, D) and edge indices (2, E) (row 0 source, row 1 target) -> tokens (N, S, D)."""

    def __init__(self, config: FoundationConfig, root: bool = False) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(FoundationLayer(config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps) if config.final_norm \
            else nn.Identity()
        self.update_proj = nn.Linear(config.hidden, config.hidden)
        self.root_proj = nn.Linear(config.hidden, config.hidden) if root else None

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def node_outputs(self, x: Tensor) -> Tensor:
        """The foundation model on each node alone (N, S, D): a self-loop's message."""
        for layer in self.layers:
            x = layer.self_forward(x)
        return self.final_norm(x)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n, s, d = x.shape
        if d != self.config.hidden:
            raise ValueError(f"tokens have width {d}, expected {self.config.hidden}")
        keys_values, z = [], x
        for layer in self.layers:  # once per node: every layer's keys and values of Z^{l-1}
            keys_values.append(layer.keys_values(z))
            if len(keys_values) < len(self.layers) or self.root_proj is not None:
                z = layer.self_forward(z)
        first_queries = self.layers[0].queries(x)  # h^0 = X_i: the first layer's queries are per node too
        source, target = edge_index[0], edge_index[1]
        summed = x.new_zeros(n, s, d)
        for start in range(0, source.numel(), self.config.edge_chunk_size):
            src = source[start:start + self.config.edge_chunk_size]
            dst = target[start:start + self.config.edge_chunk_size]
            messages = self.message(x[dst], [(k[src], v[src]) for k, v in keys_values], first_queries[dst])
            summed = summed.index_add(0, dst, messages)  # (N, S, D)
        degree = torch.bincount(target, minlength=n).clamp(min=1).to(x.dtype)  # (N,)
        updated = self.update_proj(x + summed / degree[:, None, None])
        if self.root_proj is not None:
            updated = updated + self.root_proj(self.final_norm(z))
        return updated

    def message(self, x_i: Tensor, keys_values_j: list[tuple[Tensor, Tensor]], first_queries: Tensor) -> Tensor:
        """Every layer with queries from the message and keys/values from the source: (E, S, D)."""
        h = x_i
        for index, (layer, (k, v)) in enumerate(zip(self.layers, keys_values_j)):
            h = layer(h, k, v, first_queries if index == 0 else None)
        return self.final_norm(h)


FinetuneMode = Literal["frozen", "full", "lora"]


def apply_finetune(conv: FIMPFoundationConv, mode: FinetuneMode, lora_r: int = 8, lora_alpha: int = 16) -> nn.Module:
    """Which weights train: the foundation layers frozen, fully fine-tuned, or through LoRA adapters
    on their attention projections. FIMP's own ``update_proj`` and ``root_proj`` always train."""
    if mode == "full":
        return conv
    conv.layers.requires_grad_(False)
    conv.final_norm.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        conv = inject_adapter_in_model(lora, conv)  # this freezes everything but the adapters
        conv.update_proj.requires_grad_(True)
        if conv.root_proj is not None:
            conv.root_proj.requires_grad_(True)
    return conv
