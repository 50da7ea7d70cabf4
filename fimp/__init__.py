"""FIMP: foundation-model-informed message passing (METHODS.md, "FIMP").

Built so far: ``fimp.conv.FIMPConv``, the layer (FIMP-base when randomly initialised). Loading
foundation weights, pretraining, tasks and baselines are the rest of issue 8.
"""

from fimp.conv import FIMPConv

__all__ = ["FIMPConv"]
