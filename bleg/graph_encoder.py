"""The GCN that turns a brain graph's R regions into R tokens in a language model's embedding space.

.. math::
    H^{(l+1)} = \\mathrm{GELU}\\big(\\mathrm{BN}(\\hat D^{-1/2} \\hat A \\hat D^{-1/2} H^{(l)} W^{(l)})\\big),
    \\qquad \\text{tokens} = H^{(L)} \\in \\mathbb{R}^{R \\times d_{LM}}

Official BLEG: three GCNConv layers R -> 256 -> 256 -> d_LM, each followed by BatchNorm and GELU,
no pooling. Saved like a Hugging Face model: ``config.json`` and ``model.safetensors`` in a folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.utils import to_dense_batch

from fmgnn.cohort import CohortError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class GraphEncoderConfig:
    """Args:
        in_channels: Node feature width (R for FC-row features).
        hidden: Widths of the hidden GCN layers.
        out_channels: Token width, the language model's embedding width d_LM.
        dropout: Dropout after each hidden layer.
    """

    in_channels: int = 90
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    out_channels: int = 768
    dropout: float = 0.0


class GraphTokenEncoder(nn.Module):
    """Shapes: ``x`` (N, F), ``edge_index`` (2, E), ``edge_weight`` (E,) -> node tokens (N, d_LM)."""

    def __init__(self, config: GraphEncoderConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_channels, *config.hidden, config.out_channels]
        # The graph builder already adds self-loops (METHODS.md keeps them), so GCNConv adds none.
        self.convs = nn.ModuleList(GCNConv(a, b, add_self_loops=False) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])
        self.dropout = nn.Dropout(config.dropout)

    def reset_parameters(self) -> None:
        for module in [*self.convs, *self.norms]:
            module.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = nn.functional.gelu(norm(conv(x, edge_index, edge_weight)))  # (N, width)
            if i < len(self.convs) - 1:
                x = self.dropout(x)
        return x

    def tokens(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None, batch: Tensor) -> Tensor:
        """Graph tokens per graph: (G, R, d_LM), every graph of a cohort having the same R regions."""
        dense, mask = to_dense_batch(self(x, edge_index, edge_weight), batch)  # (G, R, d), (G, R)
        if not bool(mask.all()):
            raise ValueError("graphs in one batch have different numbers of regions")
        return dense

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"model_type": "bleg_graph_encoder", **asdict(self.config)},
                                                     indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> GraphTokenEncoder:
        folder = Path(folder)
        try:
            values = json.loads((folder / CONFIG_NAME).read_text())
        except FileNotFoundError:
            raise CohortError(f"{folder}: not a saved graph encoder (no {CONFIG_NAME})") from None
        if values.pop("model_type", None) != "bleg_graph_encoder":
            raise CohortError(f"{folder / CONFIG_NAME}: model_type is not bleg_graph_encoder")
        model = cls(GraphEncoderConfig(**values))
        load_checked_weights(model, folder / WEIGHTS_NAME)
        return model


def load_checked_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``model``; a missing key or another shape fails naming the file and key."""
    state = load_file(str(path))
    for key, value in model.state_dict().items():
        if key not in state:
            raise CohortError(f"{path}: missing {key}")
        if state[key].shape != value.shape:
            raise CohortError(f"{path}: {key} has shape {tuple(state[key].shape)}, "
                              f"the config expects {tuple(value.shape)}")
    model.load_state_dict(state)
