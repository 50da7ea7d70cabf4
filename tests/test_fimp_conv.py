"""FIMPConv against the AMPNet-style reference: a loop of nn.MultiheadAttention over edges."""

import pytest
import torch
from torch import nn

from fimp.conv import FIMPConv


def naive_fimp(conv: FIMPConv, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """One nn.MultiheadAttention call per edge (as the AMPNet prototype did), with the layer's weights copied."""
    d = conv.channels
    attention = nn.MultiheadAttention(d, conv.heads, batch_first=True, dtype=x.dtype)
    with torch.no_grad():
        attention.in_proj_weight.copy_(torch.cat([conv.q_proj.weight, conv.k_proj.weight, conv.v_proj.weight]))
        attention.in_proj_bias.copy_(torch.cat([conv.q_proj.bias, conv.k_proj.bias, conv.v_proj.bias]))
        attention.out_proj.weight.copy_(conv.o_proj.weight)
        attention.out_proj.bias.copy_(conv.o_proj.bias)
    messages = [torch.zeros_like(x[0]) for _ in range(x.shape[0])]
    counts = [0] * x.shape[0]
    for j, i in edge_index.t().tolist():
        out, _ = attention(x[i][None], x[j][None], x[j][None], need_weights=False)
        messages[i] = messages[i] + out[0]
        counts[i] += 1
    aggregated = torch.stack([m / max(c, 1) for m, c in zip(messages, counts)])
    return conv.update_proj(x + aggregated)


def naive_functional(conv: FIMPConv, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The same loop through functional MHA on the layer's own tensors, so gradients reach every weight."""
    d = conv.channels
    in_weight = torch.cat([conv.q_proj.weight, conv.k_proj.weight, conv.v_proj.weight])
    in_bias = torch.cat([conv.q_proj.bias, conv.k_proj.bias, conv.v_proj.bias])
    total = torch.zeros_like(x)
    counts = torch.zeros(x.shape[0], dtype=x.dtype)
    for j, i in edge_index.t().tolist():
        out, _ = nn.functional.multi_head_attention_forward(
            x[i][:, None], x[j][:, None], x[j][:, None], d, conv.heads, in_weight, in_bias, None, None, False, 0.0,
            conv.o_proj.weight, conv.o_proj.bias, training=False, need_weights=False)
        total = total.index_add(0, torch.tensor([i]), out[:, 0][None])
        counts[i] += 1
    return conv.update_proj(x + total / counts.clamp(min=1)[:, None, None])


@pytest.mark.parametrize("n_nodes, n_edges, chunk", [(6, 14, 4096), (9, 30, 7)])
def test_fast_layer_matches_the_edge_loop_in_float64(n_nodes, n_edges, chunk):
    torch.manual_seed(n_nodes)
    conv = FIMPConv(16, heads=4, edge_chunk_size=chunk).double()
    with torch.no_grad():  # non-zero biases, so they are checked too
        for linear in (conv.q_proj, conv.k_proj, conv.v_proj, conv.o_proj, conv.update_proj):
            linear.bias.normal_()
    x = torch.randn(n_nodes, 5, 16, dtype=torch.float64, requires_grad=True)
    edge_index = torch.randint(0, n_nodes, (2, n_edges))
    edge_index[1, 0] = edge_index[1, 1]  # a node with two in-edges for sure

    fast = conv(x, edge_index)
    slow = naive_functional(conv, x, edge_index)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(naive_fimp(conv, x.detach(), edge_index), slow.detach(), atol=1e-5, rtol=0)

    weight = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weight).sum(), [x, *conv.parameters()])
    grads_slow = torch.autograd.grad((slow * weight).sum(), [x, *conv.parameters()])
    for g_fast, g_slow in zip(grads_fast, grads_slow):
        torch.testing.assert_close(g_fast, g_slow, atol=1e-5, rtol=0)


def test_isolated_nodes_keep_their_own_tokens_and_reset_parameters():
    conv = FIMPConv(8, heads=2)
    x = torch.randn(3, 4, 8)
    out = conv(x, torch.tensor([[0], [1]]))
    torch.testing.assert_close(out[2], conv.update_proj(x[2]))  # node 2 receives nothing
    assert out.shape == (3, 4, 8)
    before = conv.q_proj.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.q_proj.weight)
    with pytest.raises(ValueError, match="must be divisible by heads"):
        FIMPConv(10, heads=4)
    with pytest.raises(ValueError, match="tokens have width 6, expected 8"):
        conv(torch.randn(3, 4, 6), torch.tensor([[0], [1]]))
