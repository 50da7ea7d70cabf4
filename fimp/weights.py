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
