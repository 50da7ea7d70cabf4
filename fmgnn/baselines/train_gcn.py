"""Training function of the GCN baseline for one fold: plain PyTorch that Ray Train wraps.

Ray enters at three marked points: the worker's shard (rank and world size for the
``DistributedSampler``), ``prepare_model`` (DDP), and ``ray.train.report`` with a checkpoint
per epoch. Under ``ScalingConfig(num_workers=0)`` the same function runs in the calling process.

Model selection uses the validation subjects only (lowest validation loss); the test subjects
are scored once, after training, with the selected weights.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from fmgnn.baselines.gcn import GCNClassifier, GCNConfig
from fmgnn.cohort import Cohort
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.evaluation.splits import Split
from fmgnn.graphs import GraphConfig, build_graphs
from fmgnn.ray_logging import quiet_report_logs

CHECKPOINT_FILE = "state.pt"


@dataclass
class GCNTrainSpec:
    """Everything one fold's training needs; passed to every worker as ``config["spec"]``."""

    cohort_path: str
    split: Split
    graph: GraphConfig
    model: GCNConfig
    seed: int = 0


def load_graphs(cohort: Cohort, indices: list[int], graph_config: GraphConfig) -> list[Data]:
    return build_graphs(cohort.fc(indices), cohort.labels()[indices], graph_config)


def train_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        optimizer.zero_grad()
        logits = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)  # (G, C)
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        optimizer.step()
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def predict(model: torch.nn.Module, graphs: list[Data], batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, C), labels (N,) and mean cross-entropy over ``graphs``."""
    model.eval()
    probabilities, labels, losses = [], [], []
    for batch in DataLoader(graphs, batch_size=batch_size):
        logits = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)  # (G, C)
        losses.append(F.cross_entropy(logits, batch.y, reduction="sum").item())
        probabilities.append(torch.softmax(logits, dim=1).numpy())
        labels.append(batch.y.numpy())
    y = np.concatenate(labels)
    return np.concatenate(probabilities), y, sum(losses) / len(y)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop(config: dict) -> None:
    spec: GCNTrainSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    cohort = Cohort(spec.cohort_path)
    train_graphs = load_graphs(cohort, spec.split.train, spec.graph)
    val_graphs = load_graphs(cohort, spec.split.val, spec.graph)

    # Ray: each worker trains on its own shard of the training subjects.
    sampler = DistributedSampler(
        train_graphs, num_replicas=context.get_world_size(), rank=context.get_world_rank(),
        shuffle=True, seed=spec.seed,
    )
    loader = DataLoader(train_graphs, batch_size=spec.model.batch_size, sampler=sampler)

    model = GCNClassifier(train_graphs[0].num_node_features, cohort.n_classes, spec.model)
    model = ray.train.torch.prepare_model(model)  # Ray: DDP when there is more than one worker
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.model.lr, weight_decay=spec.model.weight_decay)

    start_epoch, best_val_loss, best_epoch, best_state, history = 0, float("inf"), -1, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume: a rerun with the same run name, or a restart after a worker failure
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_val_loss, best_epoch = state["epoch"] + 1, state["best_val_loss"], state["best_epoch"]
        best_state, history = state["best_state"], state["history"]
        if state["stopped_early"] or start_epoch >= spec.model.epochs:
            # The run had ended before the launcher collected it: report its result again.
            ray.train.report({**history[-1], "best_epoch": best_epoch,
                              **_test_metrics(spec, cohort, best_state, train_graphs[0].num_node_features)})
            return

    for epoch in range(start_epoch, spec.model.epochs):
        sampler.set_epoch(epoch)
        train_loss = train_epoch(model, loader, optimizer)
        val_probabilities, val_y, val_loss = predict(_unwrap(model), val_graphs, spec.model.batch_size)
        if val_loss < best_val_loss:
            best_val_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        val_metrics = classification_metrics(val_y, val_probabilities)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "val_accuracy": val_metrics["accuracy"], "val_auc": val_metrics["auc"]}
        history.append(record)
        stopped_early = epoch - best_epoch >= spec.model.patience
        stop = stopped_early or epoch == spec.model.epochs - 1
        with tempfile.TemporaryDirectory() as directory:
            if context.get_world_rank() == 0:
                torch.save({
                    "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "best_val_loss": best_val_loss, "best_epoch": best_epoch, "best_state": best_state,
                    "history": history, "stopped_early": stopped_early, "spec": spec,
                }, Path(directory) / CHECKPOINT_FILE)
            metrics = {**record, "best_epoch": best_epoch, "done": False}
            if stop:
                metrics.update(_test_metrics(spec, cohort, best_state, train_graphs[0].num_node_features))
            # Ray: report metrics and this epoch's checkpoint (rank 0 writes it).
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory)
                             if context.get_world_rank() == 0 else None)
        if stop:
            break


def _test_metrics(spec: GCNTrainSpec, cohort: Cohort, best_state: dict, in_channels: int) -> dict:
    """Score the test subjects once, with the weights chosen on validation."""
    model = GCNClassifier(in_channels, cohort.n_classes, spec.model)
    model.load_state_dict(best_state)
    test_graphs = load_graphs(cohort, spec.split.test, spec.graph)
    probabilities, y, _ = predict(model, test_graphs, spec.model.batch_size)
    return {"done": True, "test_probabilities": probabilities.tolist(), "test_labels": y.tolist(),
            **{f"test_{k}": v for k, v in classification_metrics(y, probabilities).items()}}
