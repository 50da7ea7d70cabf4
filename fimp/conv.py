"""The FIMP layer: message passing whose messages are cross-attention between nodes' token sequences."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FIMPConv(nn.Module):
    r"""Foundation-model-informed message passing (Rizvi et al., "Foundation Model-Informed Message
    Passing for Graph Neural Networks", arXiv 2210.09475; first version AMPNet).

    Every node :math:`i` carries a sequence of :math:`S` tokens :math:`X_i \in \mathbb{R}^{S \times D}`.
    The message from :math:`j` to :math:`i` is multi-head cross-attention with queries from :math:`i`
    and keys and values from :math:`j`; messages are averaged over the in-neighbours, added to the
    node's own tokens, and projected:

    .. math::
        H_{j \to i} = \Big\Vert_{h=1}^{H} \mathrm{softmax}\Big(
            \frac{(X_i W_Q^h)(X_j W_K^h)^\top}{\sqrt{D/H}}\Big) X_j W_V^h \; W_O,
        \qquad
        X_i' = \Big(X_i + \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)} H_{j \to i}\Big) W_P

    (a node without in-neighbours gets no message). :math:`W_Q, W_K, W_V, W_O` may be a foundation
    model's pretrained attention weights (see ``fimp.weights``); from random initialisation this is
    FIMP-base. Queries, keys and values depend on one node only, so they are computed once per node
    and gathered per edge; the per-edge attention runs batched through
    ``scaled_dot_product_attention``, ``edge_chunk_size`` edges at a time to bound memory.

    Args:
        channels (int): Token width :math:`D`.
        heads (int): Attention heads :math:`H`; must divide :math:`D`. (default: ``4``)
        dropout (float): Attention dropout probability in training. (default: ``0.0``)
        bias (bool): Learn additive biases in the projections. (default: ``True``)
        edge_chunk_size (int): Edges per attention batch. (default: ``4096``)

    Shapes:
        - **input:** tokens :math:`(N, S, D)`, edge indices :math:`(2, E)` (row 0 source, row 1 target)
        - **output:** tokens :math:`(N, S, D)`
    """

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.0, bias: bool = True,
                 edge_chunk_size: int = 4096) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels, self.heads, self.dropout = channels, heads, dropout
        self.edge_chunk_size = edge_chunk_size
        self.q_proj = nn.Linear(channels, channels, bias=bias)
        self.k_proj = nn.Linear(channels, channels, bias=bias)
        self.v_proj = nn.Linear(channels, channels, bias=bias)
        self.o_proj = nn.Linear(channels, channels, bias=bias)
        self.update_proj = nn.Linear(channels, channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.update_proj):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        n, s, _ = x.shape
        return x.view(n, s, self.heads, self.channels // self.heads).transpose(1, 2)  # (N, H, S, D/H)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n, s, d = x.shape
        if d != self.channels:
            raise ValueError(f"tokens have width {d}, expected {self.channels}")
        q = self._split_heads(self.q_proj(x))  # (N, H, S, D/H): once per node, not per edge
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        source, target = edge_index[0], edge_index[1]
        summed = x.new_zeros(n, s, d)
        for start in range(0, source.numel(), self.edge_chunk_size):
            src = source[start:start + self.edge_chunk_size]
            dst = target[start:start + self.edge_chunk_size]
            messages = self.message(q[dst], k[src], v[src])  # (E_chunk, S, D)
            summed = summed.index_add(0, dst, messages)  # (N, S, D)
        degree = torch.bincount(target, minlength=n).clamp(min=1).to(x.dtype)  # (N,)
        aggregated = summed / degree[:, None, None]  # mean over in-neighbours
        return self.update_proj(x + aggregated)  # (N, S, D)

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor) -> Tensor:
        """Cross-attention of target queries over source keys and values: (E, H, S, D/H) each -> (E, S, D)."""
        attended = F.scaled_dot_product_attention(q_i, k_j, v_j, dropout_p=self.dropout if self.training else 0.0)
        e, h, s, dh = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(e, s, h * dh))  # (E, S, D)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads})"
