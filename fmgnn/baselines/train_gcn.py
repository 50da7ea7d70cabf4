"""The GCN baseline of one fold as a task of the training loop (``fmgnn.engine``).

Model selection uses the validation subjects only (lowest validation cross-entropy); the engine
scores the test subjects once, after training, with the selected weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch_geometric.data import Batch, Data

from fmgnn.baselines.gcn import GCNClassifier, GCNConfig
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.evaluation.splits import Split
from fmgnn.graph_stream import PartGraphs
from fmgnn.graphs import GraphConfig


def graph_forward(model: torch.nn.Module, batch: Data) -> Any:
    return model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[Batch],
            device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, C), labels (N,) and mean cross-entropy over the graphs of ``batches``.

    Works for any classifier called as ``model(x, edge_index, edge_weight, batch)`` that returns
    logits (G, C) or a tuple whose first item they are.
    """
    model.eval()
    probabilities, labels, loss = [], [], 0.0
    for batch in batches:
        batch = batch.to(device) if device is not None else batch
        logits = graph_forward(model, batch)
        logits = logits[0] if isinstance(logits, tuple) else logits  # (G, C)
        loss += F.cross_entropy(logits, batch.y, reduction="sum").item()
        probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(batch.y.cpu().numpy())
    y = np.concatenate(labels)
    return np.concatenate(probabilities), y, loss / len(y)


def held_out_metrics(probabilities: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """What a classification task reports of its test subjects."""
    return {"test_probabilities": probabilities.tolist(), "test_labels": y.tolist(),
            **{f"test_{k}": v for k, v in classification_metrics(y, probabilities).items()}}


class GraphClassificationTask:
    """What every graph classifier of a fold shares: graphs of the split (``fmgnn.graph_stream``: held in
    memory when a part fits ``graph.memory_mb``, streamed from the cohort file when not), this rank's
    shard of the training subjects, validation on cross-entropy, the test subjects scored once.
    Subclasses build the model and the batch loss, and may ``decorate`` the graphs they are given."""

    trainable_only = False

    def __init__(self, name: str, cohort_path: str, split: Split, graph: GraphConfig, seed: int,
                 epochs: int, patience: int, batch_size: int, output: Path | None = None) -> None:
        self.name, self.cohort_path, self.split, self.graph, self.seed = name, cohort_path, split, graph, seed
        self.epochs, self.patience, self.batch_size, self.output = epochs, patience, batch_size, output

    def decorate(self, graphs: list[Data], rows: np.ndarray) -> None:
        """Fields a training graph carries beyond its FC and label (none here)."""

    def setup(self, world: World) -> None:
        self.world = world
        self.cohort = Cohort(self.cohort_path)
        self.train_graphs = PartGraphs(self.cohort, self.split.train, self.graph, self.decorate)
        self.val_graphs = PartGraphs(self.cohort, self.split.val, self.graph)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        # Ray: each worker trains on its own shard of the training subjects.
        positions = self.train_graphs.shard_positions(epoch, self.seed, self.world.rank, self.world.size)
        for batch in self.train_graphs.ordered(positions, self.batch_size):
            # Pinned host memory: the copy to a GPU runs beside the step instead of before it.
            yield batch.pin_memory() if self.world.device.type == "cuda" else batch

    def validate(self, model: torch.nn.Module) -> Validation:
        probabilities, y, loss = predict(model, self.val_graphs.batches(self.batch_size), self.world.device)
        metrics = classification_metrics(y, probabilities)
        return Validation(loss, {"val_loss": loss, "val_accuracy": metrics["accuracy"], "val_auc": metrics["auc"]})

    def test(self, model: torch.nn.Module) -> dict[str, Any]:
        test_graphs = PartGraphs(self.cohort, self.split.test, self.graph)
        return held_out_metrics(*predict(model, test_graphs.batches(self.batch_size), self.world.device)[:2])

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        torch.save(model.state_dict(), directory / "model.pt")


class GCNTask(GraphClassificationTask):
    """The GCN baseline on one fold: cross-entropy on the training subjects."""

    def __init__(self, name: str, cohort_path: str, split: Split, graph: GraphConfig, model: GCNConfig,
                 seed: int = 0, output: Path | None = None) -> None:
        super().__init__(name, cohort_path, split, graph, seed, model.epochs, model.patience, model.batch_size,
                         output)
        self.model_config = model

    def build_model(self) -> GCNClassifier:
        return GCNClassifier(self.train_graphs.first().num_node_features, self.cohort.n_classes, self.model_config)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.model_config.lr,
                                 weight_decay=self.model_config.weight_decay)

    def loss(self, model: torch.nn.Module, batch: Data) -> BatchLoss:
        return BatchLoss(F.cross_entropy(graph_forward(model, batch), batch.y), batch.num_graphs)
