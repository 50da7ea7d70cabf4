"""A pretrained foundation model saved in Hugging Face ViT format, so that FIMP loads it like any checkpoint.

The transformer layers and final LayerNorm go into a ``ViTModel`` (``config.json`` +
``model.safetensors``; its patch embedding is unused); the token embedding, mask token, positions
and decoder of the pretraining model go beside it in ``fimp_tokens.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fimp.foundation import FoundationConfig
from fimp.reconstruction import TokenModel
from fmgnn.errors import InputError

TOKENS_FILE = "fimp_tokens.safetensors"
TOKEN_KEYS = ("embed.weight", "embed.bias", "mask_token", "position", "decode.weight", "decode.bias")


def save_foundation(model: TokenModel, folder: str | Path) -> None:
    from transformers import ViTConfig, ViTModel

    config: FoundationConfig = model.config.foundation
    if not config.norm_first or config.activation != "gelu":
        raise InputError("only pre-LN GELU foundation models map onto ViT")
    vit = ViTModel(ViTConfig(hidden_size=config.hidden, num_hidden_layers=config.layers,
                             num_attention_heads=config.heads, intermediate_size=config.intermediate,
                             layer_norm_eps=config.layer_norm_eps, hidden_act="gelu", image_size=16, patch_size=16),
                   add_pooling_layer=False)
    conv = model.convs[0]
    ours_to_vit = {"q_proj": "attention.q_proj", "k_proj": "attention.k_proj", "v_proj": "attention.v_proj",
                   "o_proj": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
                   "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    state = vit.state_dict()
    with torch.no_grad():
        for index, layer in enumerate(conv.layers):
            for ours, theirs in ours_to_vit.items():
                for kind in ("weight", "bias"):
                    state[f"layers.{index}.{theirs}.{kind}"].copy_(getattr(getattr(layer, ours), kind))
        for kind in ("weight", "bias"):
            state[f"layernorm.{kind}"].copy_(getattr(conv.final_norm, kind))
    folder = Path(folder)
    vit.save_pretrained(folder)
    own = model.state_dict()
    save_file({k: own[k].contiguous() for k in TOKEN_KEYS}, str(folder / TOKENS_FILE))


def load_token_weights(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The pretraining model's embedding and decoder, when the folder has them (fmgnn pretrain's output)."""
    path = Path(folder) / TOKENS_FILE
    return load_file(str(path)) if path.is_file() else None
