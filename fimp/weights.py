"""Pretrained attention weights onto a FIMPConv: W_Q, W_K, W_V and W_O of one transformer layer.

Layouts (the key prefix of layer ``l`` in the checkpoint's state dict):

- ``vit``: Hugging Face ViT / ViTMAE (BrainLM's encoder follows ViTMAE): ``encoder.layer.{l}.attention.
  attention.{query,key,value}`` and ``encoder.layer.{l}.attention.output.dense`` in checkpoint files, or
  transformers 5's ``layers.{l}.attention.{q,k,v,o}_proj`` in a loaded model's state dict;
- ``bert``: BERT-family encoders: ``encoder.layer.{l}.attention.self.{query,key,value}`` and
  ``encoder.layer.{l}.attention.output.dense``;
- ``torch``: ``nn.TransformerEncoder`` naming (scGPT): ``layers.{l}.self_attn.in_proj_{weight,bias}``
  (Q, K, V stacked) and ``layers.{l}.self_attn.out_proj``.

A model prefix (``vit.``, ``bert.``, ``transformer_encoder.``...) is found automatically. Every
tensor's shape is checked; a missing key or a wrong shape fails naming the key, the expected and the
found shape. Like nanoGPT's ``from_pretrained``, the copy is explicit, key by key.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fimp.conv import FIMPConv
from fimp.foundation import FIMPFoundationConv

Layout = Literal["vit", "bert", "torch"]


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the layer."""


def _attention_keys(layout: Layout, layer: int) -> list[dict[str, str]]:
    """Candidate namings, each FIMPConv parameter -> checkpoint key (without the model prefix)."""
    if layout == "torch":
        base = f"layers.{layer}.self_attn."
        return [{"in_proj_weight": base + "in_proj_weight", "in_proj_bias": base + "in_proj_bias",
                 "o_proj.weight": base + "out_proj.weight", "o_proj.bias": base + "out_proj.bias"}]
    inner = "attention.attention." if layout == "vit" else "attention.self."
    base = f"encoder.layer.{layer}."
    classic = {f"{ours}_proj.{kind}": f"{base}{inner}{theirs}.{kind}"
               for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")) for kind in ("weight", "bias")}
    classic.update({"o_proj.weight": base + "attention.output.dense.weight",
                    "o_proj.bias": base + "attention.output.dense.bias"})
    if layout == "bert":
        return [classic]
    # transformers 5 names ViT layers layers.{l}.attention.{q,k,v,o}_proj (and converts old files on
    # load); checkpoint files on the hub keep the classic names.
    current = {f"{p}_proj.{kind}": f"layers.{layer}.attention.{p}_proj.{kind}"
               for p in ("q", "k", "v", "o") for kind in ("weight", "bias")}
    return [current, classic]


def _find_prefix(state_dict: dict[str, Tensor], key: str) -> str:
    """The model prefix under which ``key`` is stored ('' when none)."""
    for name in state_dict:
        if name.endswith(key):
            return name[: len(name) - len(key)]
    raise CheckpointMismatch(f"checkpoint has no key ending in {key!r} (is the layout or layer index right?)")


def load_attention_weights(conv: FIMPConv, state_dict: dict[str, Tensor], layout: Layout, layer: int = 0) -> None:
    """Copy one pretrained layer's attention weights into ``conv`` (in place)."""
    candidates = _attention_keys(layout, layer)
    for keys in candidates:
        first = next(iter(keys.values()))
        if any(name.endswith(first) for name in state_dict):
            break
    prefix = _find_prefix(state_dict, first)
    d = conv.channels
    expected = {"in_proj_weight": (3 * d, d), "in_proj_bias": (3 * d,)}
    tensors = {}
    for ours, theirs in keys.items():
        full = prefix + theirs
        if full not in state_dict:
            raise CheckpointMismatch(f"checkpoint key {full!r} is missing")
        shape = expected.get(ours, (d, d) if ours.endswith("weight") else (d,))
        found = tuple(state_dict[full].shape)
        if found != shape:
            raise CheckpointMismatch(f"checkpoint key {full!r}: expected shape {shape}, found {found}")
        tensors[ours] = state_dict[full]
    if layout == "torch":  # Q, K, V are stacked along the output dimension
        for i, name in enumerate(("q", "k", "v")):
            tensors[f"{name}_proj.weight"] = tensors["in_proj_weight"][i * d:(i + 1) * d]
            tensors[f"{name}_proj.bias"] = tensors["in_proj_bias"][i * d:(i + 1) * d]
    with torch.no_grad():
        for name in ("q", "k", "v", "o"):
            linear = getattr(conv, f"{name}_proj")
            linear.weight.copy_(tensors[f"{name}_proj.weight"])
            if linear.bias is None:
                raise CheckpointMismatch(f"the checkpoint has biases; build FIMPConv(..., bias=True) for {name}_proj")
            linear.bias.copy_(tensors[f"{name}_proj.bias"])


# Per-layer names of a whole transformer layer, ours -> theirs, for load_foundation_weights.
_LAYER_NAMES: dict[str, dict[str, str]] = {
    # transformers 5 ViT / ViTMAE modules (a loaded model's state dict)
    "vit": {"q_proj": "attention.q_proj", "k_proj": "attention.k_proj", "v_proj": "attention.v_proj",
            "o_proj": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
            "fc1": "mlp.fc1", "fc2": "mlp.fc2"},
    # ViT / ViTMAE checkpoint files on the hub (BrainLM's included)
    "vit_hub": {"q_proj": "attention.attention.query", "k_proj": "attention.attention.key",
                "v_proj": "attention.attention.value", "o_proj": "attention.output.dense",
                "norm1": "layernorm_before", "norm2": "layernorm_after", "fc1": "intermediate.dense",
                "fc2": "output.dense"},
    "bert": {"q_proj": "attention.self.query", "k_proj": "attention.self.key", "v_proj": "attention.self.value",
             "o_proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
             "norm2": "output.LayerNorm", "fc1": "intermediate.dense", "fc2": "output.dense"},
    "torch": {"o_proj": "self_attn.out_proj", "norm1": "norm1", "norm2": "norm2", "fc1": "linear1",
              "fc2": "linear2"},
}
_LAYER_PREFIX = {"vit": "layers.{l}.", "vit_hub": "encoder.layer.{l}.", "bert": "encoder.layer.{l}.",
                 "torch": "layers.{l}."}
_FINAL_NORM = {"vit": "layernorm", "vit_hub": "layernorm"}


def load_foundation_weights(conv: FIMPFoundationConv, state_dict: dict[str, Tensor], layout: Layout) -> None:
    """Copy every layer of a pretrained encoder (and its final LayerNorm) into ``conv``, checking keys and shapes.

    ``update_proj`` is FIMP's own and keeps its initialisation.
    """
    if layout == "vit" and not any(".attention.q_proj." in k for k in state_dict):
        layout = "vit_hub"
    names = _LAYER_NAMES[layout]
    first = _LAYER_PREFIX[layout].format(l=0) + names["o_proj"] + ".weight"
    prefix = _find_prefix(state_dict, first)
    targets: dict[str, Tensor] = {}
    for index in range(len(conv.layers)):
        base = prefix + _LAYER_PREFIX[layout].format(l=index)
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                targets[f"layers.{index}.{ours}.{kind}"] = _tensor(state_dict, base + f"{theirs}.{kind}")
        if layout == "torch":  # Q, K, V stacked in in_proj
            weight = _tensor(state_dict, base + "self_attn.in_proj_weight")
            bias = _tensor(state_dict, base + "self_attn.in_proj_bias")
            d = weight.shape[1]
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                targets[f"layers.{index}.{name}.weight"] = weight[i * d:(i + 1) * d]
                targets[f"layers.{index}.{name}.bias"] = bias[i * d:(i + 1) * d]
    if layout in _FINAL_NORM and conv.config.final_norm:
        for kind in ("weight", "bias"):
            targets[f"final_norm.{kind}"] = _tensor(state_dict, prefix + f"{_FINAL_NORM[layout]}.{kind}")
    ours = conv.state_dict()
    for key, value in targets.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointMismatch(f"checkpoint tensor for {key}: expected shape {tuple(ours[key].shape)}, "
                                     f"found {tuple(value.shape)}")
    with torch.no_grad():
        for key, value in targets.items():
            ours[key].copy_(value)


def _tensor(state_dict: dict[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointMismatch(f"checkpoint key {key!r} is missing")
    return state_dict[key]
