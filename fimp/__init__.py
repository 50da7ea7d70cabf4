"""FIMP: foundation-model-informed message passing (METHODS.md, "FIMP").

Built so far: ``fimp.conv.FIMPConv`` (the layer; FIMP-base when randomly initialised) and
``fimp.weights.load_attention_weights`` (a pretrained layer's W_Q, W_K, W_V, W_O from ViT/ViTMAE, BERT
or nn.TransformerEncoder checkpoints). The full foundation block, pretraining, tasks and baselines
are the rest of issue 8.
"""

from fimp.conv import FIMPConv
from fimp.weights import load_attention_weights

__all__ = ["FIMPConv", "load_attention_weights"]
