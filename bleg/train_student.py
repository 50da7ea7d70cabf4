"""Training function of BLEG stage 3 for one fold: plain PyTorch that Ray Train wraps.

Loss ``(1 - lambda) CE + lambda align(h_G, h_LM)`` on the training subjects; the epoch with the
lowest validation cross-entropy is kept (validation needs graphs only); the test subjects are
scored once, at the end, with that epoch's weights. The last checkpoint holds the trained model
in ``model/`` for ``fmgnn predict``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.student import AlignLoss, BLEGStudent, StudentConfig, alignment_loss
from fmgnn.baselines.train_gcn import load_graphs
from fmgnn.cohort import Cohort
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.evaluation.splits import Split
from fmgnn.graphs import GraphConfig
from fmgnn.ray_logging import quiet_report_logs
from fmgnn.train_state import load_model_state, report_epoch, restore, seed_epoch, unwrap

GRAPH_CONFIG_NAME = "graph.json"


@dataclass
class AlignmentConfig:
    """Args:
        lam: Weight of the alignment term (official default 0.2; 0: cross-entropy only).
        align: ``mse``, ``cosine`` or ``kl`` (softened with ``temperature``).
        temperature: KL temperature T.
        normalize_targets: Standardise h_LM per dimension with the training subjects' mean and std,
            so that MSE compares like with like whatever the LM's hidden scale.
        epochs: Maximum epochs.
        batch_size: Graphs per batch and worker.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: Stop after this many epochs without a lower validation cross-entropy.
        student: Adapter and head.
    """

    lam: float = 0.2
    align: AlignLoss = "mse"
    temperature: float = 3.0
    normalize_targets: bool = True
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    patience: int = 30
    student: StudentConfig = field(default_factory=StudentConfig)


@dataclass
class StudentSpec:
    """One fold and variant of stage 3; passed to every worker as ``config["spec"]``.

    ``encoder_state`` holds a stage-2 encoder's weights (frozen); without it the encoder starts
    from random weights and trains (the ablations without stage 2). ``targets`` maps training
    subjects to h_LM.
    """

    cohort_path: str
    split: Split
    graph: GraphConfig
    train: AlignmentConfig
    encoder: GraphEncoderConfig = field(default_factory=GraphEncoderConfig)
    encoder_state: dict[str, torch.Tensor] | None = None
    targets: dict[str, np.ndarray] | None = None
    seed: int = 0


def build_student(spec: StudentSpec, n_classes: int) -> BLEGStudent:
    encoder = GraphTokenEncoder(spec.encoder)
    if spec.encoder_state is not None:
        encoder.load_state_dict(spec.encoder_state)
    config = StudentConfig(**{**spec.train.student.__dict__, "n_classes": n_classes,
                              "train_encoder": spec.encoder_state is None})
    return BLEGStudent(encoder, config)


def attach_targets(graphs: list[Data], subject_ids: list[str], spec: StudentSpec) -> None:
    """Give every training graph its (standardised) teacher vector as ``graph.target`` (1, d)."""
    vectors = np.stack([spec.targets[s] for s in subject_ids])  # (N, d)
    if spec.train.normalize_targets:  # statistics of the training subjects only
        vectors = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-6)
    for graph, vector in zip(graphs, vectors):
        graph.target = torch.as_tensor(vector, dtype=torch.float32).unsqueeze(0)


@torch.no_grad()
def predict(model: BLEGStudent, graphs: list[Data], batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, C), labels (N,) and mean cross-entropy."""
    model.eval()
    probabilities, labels, loss = [], [], 0.0
    for batch in DataLoader(graphs, batch_size=batch_size):
        logits, _ = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)
        loss += F.cross_entropy(logits, batch.y, reduction="sum").item()
        probabilities.append(torch.softmax(logits, 1).numpy())
        labels.append(batch.y.numpy())
    y = np.concatenate(labels)
    return np.concatenate(probabilities), y, loss / len(y)


def train_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                config: AlignmentConfig) -> dict[str, float]:
    model.train()
    sums = {"train_loss": 0.0, "train_ce": 0.0, "train_align": 0.0}
    count = 0
    for batch in loader:
        logits, h_graph = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)
        ce = F.cross_entropy(logits, batch.y)
        align = alignment_loss(h_graph, batch.target, config.align, config.temperature) if config.lam > 0 \
            else torch.zeros(())
        loss = (1 - config.lam) * ce + config.lam * align
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for key, value in zip(sums, (loss, ce, align)):
            sums[key] += value.item() * batch.num_graphs
        count += batch.num_graphs
    return {k: v / max(count, 1) for k, v in sums.items()}


def train_student(config: dict) -> None:
    spec: StudentSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    cohort = Cohort(spec.cohort_path)
    ids = cohort.subject_ids()
    train_graphs = load_graphs(cohort, spec.split.train, spec.graph)
    val_graphs = load_graphs(cohort, spec.split.val, spec.graph)
    if spec.train.lam > 0:
        attach_targets(train_graphs, [str(ids[i]) for i in spec.split.train], spec)

    model = build_student(spec, cohort.n_classes)
    sampler = DistributedSampler(train_graphs, num_replicas=context.get_world_size(),
                                 rank=context.get_world_rank(), shuffle=True, seed=spec.seed)
    loader = DataLoader(train_graphs, batch_size=spec.train.batch_size, sampler=sampler)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.train.lr,
                                  weight_decay=spec.train.weight_decay)
    model = ray.train.torch.prepare_model(model)  # Ray: DDP when there is more than one worker

    state = restore(model, optimizer)
    while not state.finished(spec.train.epochs):
        epoch = state.epoch + 1
        sampler.set_epoch(epoch)
        seed_epoch(spec.seed, epoch)
        losses = train_epoch(model, loader, optimizer, spec.train)
        val_probabilities, val_y, val_loss = predict(unwrap(model), val_graphs, spec.train.batch_size)
        val = classification_metrics(val_y, val_probabilities)
        record = {"epoch": epoch, **losses, "val_loss": val_loss, "val_accuracy": val["accuracy"],
                  "val_auc": val["auc"]}
        state.update(model, record, val_loss, spec.train.patience)
        if not state.finished(spec.train.epochs):
            report_epoch(state, model, optimizer, {**record, "done": False})

    # The test subjects, once, with the weights chosen on validation.
    load_model_state(model, state.best_model)
    probabilities, y, _ = predict(unwrap(model), load_graphs(cohort, spec.split.test, spec.graph),
                                  spec.train.batch_size)

    def export(directory: Path) -> None:
        unwrap(model).save_pretrained(directory / "model")
        # How graphs were built is part of the model: predict must build them the same way.
        (directory / "model" / GRAPH_CONFIG_NAME).write_text(json.dumps(asdict(spec.graph), indent=2))

    report_epoch(state, model, optimizer, {
        **state.history[-1], "best_epoch": state.best_epoch, "history": state.history, "done": True,
        "resumed_at": state.resumed_at,
        "test_probabilities": probabilities.tolist(), "test_labels": y.tolist(),
        **{f"test_{k}": v for k, v in classification_metrics(y, probabilities).items()},
    }, export=export)
