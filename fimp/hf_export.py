"""A pretrained foundation model saved in Hugging Face ViT format, so that FIMP loads it like any checkpoint.

The transformer layers and final LayerNorm go into a ``ViTModel`` (``config.json`` +
``model.safetensors``; its patch embedding is unused); the token embedding, mask token, positions
and decoder of the pretraining model go beside it in ``fimp_tokens.safetensors`` (its positions too when
they are learned; a sine-cosine table is not a weight and is not saved).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fimp.foundation import FoundationConfig
from fimp.reconstruction import ReconstructionConfig, TokenModel, sinusoidal_positions
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
    save_file({k: own[k].contiguous() for k in TOKEN_KEYS if k in own}, str(folder / TOKENS_FILE))


def load_token_weights(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The pretraining model's embedding and decoder, when the folder has them (fmgnn pretrain's output)."""
    path = Path(folder) / TOKENS_FILE
    return load_file(str(path)) if path.is_file() else None


def load_foundation(model: TokenModel, folder: str | Path) -> TokenModel:
    """``model`` with every FIMP layer's foundation layers from a foundation model folder (Hugging Face ViT
    or ViTMAE, e.g. ``fmgnn pretrain``'s output) and, when the folder has them, the pretraining model's token
    embedding, mask token, positions and decoder."""
    from transformers import AutoModel

    from fimp.weights import load_foundation_weights

    foundation = AutoModel.from_pretrained(folder).state_dict()
    for conv in model.convs:
        load_foundation_weights(conv, foundation, "vit")
    tokens = load_token_weights(folder)
    if tokens is not None:
        model.load_state_dict(fit_token_weights(tokens, model), strict=False)
    return model


def fit_token_weights(tokens: dict[str, torch.Tensor], model: TokenModel) -> dict[str, torch.Tensor]:
    """Pretrained token weights in ``model``'s layout (shapes checked by ``check_token_weights``):
    - one shared map (pretraining reads every window as the same kind of thing) becomes the same map at every
      position of a per-token model;
    - a model pretrained with the sine-cosine table gives a model with learned positions that table, for its
      own number of windows, as their starting values: at the first step it computes what the pretrained
      model computes, and it may then learn what its own recording's time axis holds."""
    own = model.state_dict()
    fitted = {}
    for key, value in tokens.items():
        if key in ("embed.weight", "embed.bias", "decode.weight", "decode.bias") and value.dim() < own[key].dim():
            value = value.expand(own[key].shape).clone()
        fitted[key] = value
    if "position" not in tokens and "position" in own:
        fitted["position"] = sinusoidal_positions(*own["position"].shape)
    return fitted


def check_token_weights(folder: Path, model: ReconstructionConfig) -> list[str]:
    """What in ``folder``'s token weights does not fit a token model of ``model``'s shape: a list of reasons,
    empty when it fits."""
    path = folder / TOKENS_FILE
    if not path.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        windows = f.get_slice("position").get_shape()[0] if "position" in keys else None
        embed_shape = f.get_slice("embed.weight").get_shape()
    shared = len(embed_shape) == 2
    wrong, values = [], embed_shape[-1]
    if values != model.token_values:
        wrong.append(f"it was pretrained on windows of {values} values, this task's have {model.token_values} "
                     "(fmri.window or recording.window)")
    if windows is not None and model.position == "sinusoidal":
        wrong.append("it was pretrained with learned positions: set model.position=learned")
    elif windows is not None and windows != model.n_tokens:
        wrong.append(f"its learned positions are for {windows} windows, this task has {model.n_tokens} "
                     "(pretrain with model.position=sinusoidal to run on any number)")
    if not shared and not model.per_token:
        wrong.append("it has a map per window position: set model.per_token=true")
    elif not shared and embed_shape[0] != model.n_tokens:
        wrong.append(f"its maps per window position are for {embed_shape[0]} windows, this task has {model.n_tokens}")
    return wrong
