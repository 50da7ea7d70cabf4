"""BLEG stage 3: a frozen graph encoder, a residual bottleneck adapter, and a classifier head.

.. math::
    Z = \\mathrm{BN}(\\mathrm{GCN}(G)), \\quad Z' = Z + W_2\\,\\mathrm{Drop}(\\mathrm{GELU}(\\mathrm{BN}(W_1 Z))),
    \\quad h_G = \\tfrac{1}{R}\\textstyle\\sum_r Z'_r, \\quad \\hat y = \\mathrm{head}(h_G)

    \\mathcal{L} = (1 - \\lambda)\\,\\mathrm{CE}(y, \\hat y) + \\lambda\\,\\mathrm{align}(h_G, h_{LM})

Only the BatchNorm, the adapter and the head train (unless the encoder is trained from scratch,
as in the GCN-alone ablation). Inference needs the graph alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn import global_max_pool, global_mean_pool

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder, load_checked_weights
from fmgnn.cohort import CohortError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class StudentConfig:
    """Args:
        bottleneck: Adapter width (d -> bottleneck -> d).
        dropout: Adapter and head dropout.
        head_hidden: Width of the head's hidden layer (d -> head_hidden -> C).
        readout: Pooling of the adapted node tokens into h_G.
        n_classes: Classes of the head.
        train_encoder: Train the graph encoder too (only when it was not tuned in stage 2).
    """

    bottleneck: int = 256
    dropout: float = 0.1
    head_hidden: int = 512
    readout: Literal["mean", "max"] = "mean"
    n_classes: int = 2
    train_encoder: bool = False


class BLEGStudent(nn.Module):
    """Shapes: a PyG batch of G graphs with R nodes each -> logits (G, C) and h_G (G, d)."""

    def __init__(self, encoder: GraphTokenEncoder, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        encoder.requires_grad_(config.train_encoder)
        d = encoder.config.out_channels
        self.norm = nn.BatchNorm1d(d)
        self.adapter = nn.Sequential(
            nn.Linear(d, config.bottleneck), nn.BatchNorm1d(config.bottleneck), nn.GELU(),
            nn.Dropout(config.dropout), nn.Linear(config.bottleneck, d),
        )
        self.head = nn.Sequential(nn.Linear(d, config.head_hidden), nn.GELU(), nn.Dropout(config.dropout),
                                  nn.Linear(config.head_hidden, config.n_classes))
        self.pool = global_mean_pool if config.readout == "mean" else global_max_pool

    def train(self, mode: bool = True) -> BLEGStudent:
        super().train(mode)
        if not self.config.train_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics from stage 2
        return self

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None,
                batch: Tensor) -> tuple[Tensor, Tensor]:
        z = self.norm(self.encoder(x, edge_index, edge_weight))  # (N, d)
        z = z + self.adapter(z)  # (N, d)
        h_graph = self.pool(z, batch)  # (G, d)
        return self.head(h_graph), h_graph

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        values = {"model_type": "bleg_student", "student": asdict(self.config),
                  "encoder": asdict(self.encoder.config)}
        (folder / CONFIG_NAME).write_text(json.dumps(values, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BLEGStudent:
        folder = Path(folder)
        try:
            values = json.loads((folder / CONFIG_NAME).read_text())
        except FileNotFoundError:
            raise CohortError(f"{folder}: not a saved BLEG model (no {CONFIG_NAME})") from None
        if values.get("model_type") != "bleg_student":
            raise CohortError(f"{folder / CONFIG_NAME}: model_type {values.get('model_type')!r} is not bleg_student")
        model = cls(GraphTokenEncoder(GraphEncoderConfig(**values["encoder"])), StudentConfig(**values["student"]))
        load_checked_weights(model, folder / WEIGHTS_NAME)
        return model


AlignLoss = Literal["mse", "cosine", "kl"]


def alignment_loss(h_graph: Tensor, h_lm: Tensor, kind: AlignLoss, temperature: float = 3.0) -> Tensor:
    """Distance between the student's h_G (G, d) and the teacher's h_LM (G, d), averaged over graphs."""
    if kind == "mse":
        return F.mse_loss(h_graph, h_lm)
    if kind == "cosine":
        return (1 - F.cosine_similarity(h_graph, h_lm, dim=1)).mean()
    if kind == "kl":
        # Soft targets as in distillation; T^2 keeps the gradient scale independent of T.
        teacher = F.softmax(h_lm / temperature, dim=1)
        student = F.log_softmax(h_graph / temperature, dim=1)
        return F.kl_div(student, teacher, reduction="batchmean") * temperature**2
    raise ValueError(f"align loss {kind!r}: choose mse, cosine or kl")
