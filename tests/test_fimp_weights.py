"""Pretrained attention weights onto FIMPConv, through the real Hugging Face loading path (tiny local models)."""

import pytest
import torch
from torch import nn

from fimp.conv import FIMPConv
from fimp.weights import CheckpointMismatch, load_attention_weights


def self_message(conv: FIMPConv, tokens: torch.Tensor) -> torch.Tensor:
    """FIMP's message along a self-loop: cross-attention of a node with itself is self-attention."""
    q, k, v = (conv._split_heads(p(tokens[None])) for p in (conv.q_proj, conv.k_proj, conv.v_proj))
    return conv.message(q, k, v)[0]  # (S, D)


def test_vit_checkpoint_message_equals_the_models_own_attention(tmp_path):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=8, patch_size=4, num_channels=1)
    ViTModel(config).eval().save_pretrained(tmp_path / "vit")
    model = ViTModel.from_pretrained(tmp_path / "vit").eval()
    conv = FIMPConv(32, heads=4).eval()
    load_attention_weights(conv, model.state_dict(), "vit", layer=1)
    tokens = torch.randn(5, 32)
    output = model.layers[1].attention(tokens[None])  # self-attention + output projection
    expected = (output[0] if isinstance(output, tuple) else output)[0]
    torch.testing.assert_close(self_message(conv, tokens), expected, atol=1e-5, rtol=1e-5)


def test_vit_classic_checkpoint_names(tmp_path):
    """Hub checkpoint files keep the classic names (encoder.layer.{l}.attention.attention.query...)."""
    d = 16
    state = {}
    for name in ("query", "key", "value"):
        state[f"vit.encoder.layer.0.attention.attention.{name}.weight"] = torch.randn(d, d)
        state[f"vit.encoder.layer.0.attention.attention.{name}.bias"] = torch.randn(d)
    state["vit.encoder.layer.0.attention.output.dense.weight"] = torch.randn(d, d)
    state["vit.encoder.layer.0.attention.output.dense.bias"] = torch.randn(d)
    conv = FIMPConv(d, heads=2)
    load_attention_weights(conv, state, "vit")
    assert torch.equal(conv.v_proj.weight, state["vit.encoder.layer.0.attention.attention.value.weight"])
    assert torch.equal(conv.o_proj.bias, state["vit.encoder.layer.0.attention.output.dense.bias"])


def test_bert_and_torch_layouts(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    bert = BertModel.from_pretrained(tmp_path / "bert")
    conv = FIMPConv(32, heads=4)
    load_attention_weights(conv, bert.state_dict(), "bert")
    assert torch.equal(conv.k_proj.weight, bert.encoder.layer[0].attention.self.key.weight)

    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), num_layers=2).eval()
    conv = FIMPConv(32, heads=4).eval()
    load_attention_weights(conv, {f"transformer_encoder.{k}": v for k, v in encoder.state_dict().items()}, "torch", 1)
    tokens = torch.randn(6, 32)
    expected, _ = encoder.layers[1].self_attn(tokens[None], tokens[None], tokens[None], need_weights=False)
    torch.testing.assert_close(self_message(conv, tokens), expected[0], atol=1e-5, rtol=1e-5)


def test_mismatched_checkpoint_names_key_and_shapes():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), num_layers=1)
    with pytest.raises(CheckpointMismatch, match=r"'layers.0.self_attn.in_proj_weight': expected shape \(96, 32\), "
                                                 r"found \(48, 16\)"):
        load_attention_weights(FIMPConv(32, heads=4), encoder.state_dict(), "torch")
    with pytest.raises(CheckpointMismatch, match="no key ending in 'layers.3.self_attn.in_proj_weight'"):
        load_attention_weights(FIMPConv(16, heads=4), encoder.state_dict(), "torch", layer=3)
