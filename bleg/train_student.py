"""BLEG stage 3 of one fold as a task of the training loop (``fmgnn.engine``).

Loss ``(1 - lambda) CE + lambda align(h_G, h_LM)`` on the training subjects; the epoch with the
lowest validation cross-entropy is kept (validation needs graphs only); the engine scores the test
subjects once, at the end, with that epoch's weights. The export is the trained model in Hugging
Face form (``model/``) for ``fmgnn predict``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch_geometric.data import Data

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.student import AlignLoss, BLEGStudent, StudentConfig, alignment_loss
from fmgnn.baselines.train_gcn import GraphClassificationTask, graph_forward, predict
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.evaluation.splits import Split
from fmgnn.graphs import GraphConfig

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


def build_student(encoder: GraphEncoderConfig, encoder_state: dict[str, torch.Tensor] | None,
                  config: AlignmentConfig, n_classes: int) -> BLEGStudent:
    """The student: a stage-2 encoder frozen (``encoder_state``), or a fresh one that trains."""
    graph_encoder = GraphTokenEncoder(encoder)
    if encoder_state is not None:
        graph_encoder.load_state_dict(encoder_state)
    student = StudentConfig(**{**config.student.__dict__, "n_classes": n_classes,
                               "train_encoder": encoder_state is None})
    return BLEGStudent(graph_encoder, student)


def training_targets(scan_ids: list[str], targets: dict[str, np.ndarray], normalize: bool) -> np.ndarray:
    """The teacher vectors (N, d) of the training scans ``scan_ids``, standardised per dimension over them."""
    vectors = np.stack([targets[s] for s in scan_ids])  # (N, d)
    if normalize:  # statistics of the training subjects only
        vectors = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-6)
    return vectors


def student_loss(model: torch.nn.Module, batch: Data, config: AlignmentConfig) -> BatchLoss:
    logits, h_graph = graph_forward(model, batch)
    ce = F.cross_entropy(logits, batch.y)
    align = alignment_loss(h_graph, batch.target, config.align, config.temperature) if config.lam > 0 \
        else torch.zeros((), device=ce.device)
    return BatchLoss((1 - config.lam) * ce + config.lam * align, batch.num_graphs,
                     {"train_ce": ce.detach(), "train_align": align.detach()})


class StudentTask(GraphClassificationTask):
    """Stage 3 of one fold and variant.

    ``encoder_state`` holds a stage-2 encoder's weights (frozen); without it the encoder starts from
    random weights and trains (the ablations without stage 2). ``targets`` maps training subjects to h_LM.
    """

    def __init__(self, name: str, cohort_path: str, split: Split, graph: GraphConfig, train: AlignmentConfig,
                 encoder: GraphEncoderConfig, encoder_state: dict[str, torch.Tensor] | None = None,
                 targets: dict[str, np.ndarray] | None = None, seed: int = 0, output: Path | None = None) -> None:
        super().__init__(name, cohort_path, split, graph, seed, train.epochs, train.patience, train.batch_size,
                         output)
        self.config, self.encoder, self.encoder_state, self.targets = train, encoder, encoder_state, targets

    def setup(self, world: World) -> None:
        if self.config.lam > 0:  # standardised over all training subjects, attached to each graph built
            ids = Cohort(self.cohort_path).scan_ids()
            self.target_of_row = dict(zip(self.split.train, training_targets(
                [str(ids[i]) for i in self.split.train], self.targets, self.config.normalize_targets)))
        super().setup(world)

    def decorate(self, graphs: list[Data], rows: np.ndarray) -> None:
        if self.config.lam > 0:
            for graph, row in zip(graphs, rows):
                graph.target = torch.as_tensor(self.target_of_row[int(row)], dtype=torch.float32).unsqueeze(0)

    def build_model(self) -> BLEGStudent:
        return build_student(self.encoder, self.encoder_state, self.config, self.cohort.n_classes)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.config.lr,
                                 weight_decay=self.config.weight_decay)

    def loss(self, model: torch.nn.Module, batch: Data) -> BatchLoss:
        return student_loss(model, batch, self.config)

    def export(self, model: BLEGStudent, directory: Path) -> None:
        model.save_pretrained(directory / "model")
        # How graphs were built is part of the model: predict must build them the same way.
        (directory / "model" / GRAPH_CONFIG_NAME).write_text(json.dumps(asdict(self.graph), indent=2))


@dataclass
class FoldInput:
    """What stage 3 of one fold needs from stages 1-2 (fixed across a sweep's trials)."""

    split: Split
    encoder_state: dict[str, torch.Tensor]
    targets: dict[str, np.ndarray]


class FoldSet(torch.nn.Module):
    """K fold students as one module: one state dict, one optimizer (AdamW is per parameter, so one over
    disjoint students steps each exactly as its own would). ``forward(k, ...)`` runs student k."""

    ddp_find_unused_parameters = True  # a step runs one student: the others get no gradient

    def __init__(self, students: list[BLEGStudent]) -> None:
        super().__init__()
        self.students = torch.nn.ModuleList(students)

    def forward(self, k: int, *args: Any) -> Any:
        return self.students[k](*args)


class StudentFoldsTask:
    """One stage-3 configuration trained on K folds in lockstep (a sweep trial).

    Every epoch trains each fold's student once; the score is the mean validation cross-entropy over
    the folds, so that a scheduler compares trials on the cross-validated objective at every epoch.
    Test subjects are never scored here.
    """

    trainable_only = False
    output = None

    def __init__(self, name: str, cohort_path: str, graph: GraphConfig, encoder: GraphEncoderConfig,
                 folds: list[FoldInput], config: AlignmentConfig, seed: int = 0) -> None:
        self.name, self.seed, self.config = name, seed, config
        self.epochs, self.patience = config.epochs, config.patience
        self.folds = [StudentTask(f"{name}/{f.split.name}", cohort_path, f.split, graph, config, encoder,
                                  f.encoder_state, f.targets, seed) for f in folds]

    def setup(self, world: World) -> None:
        for fold in self.folds:
            fold.setup(world)

    def build_model(self) -> FoldSet:
        return FoldSet([fold.build_model() for fold in self.folds])

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.config.lr,
                                 weight_decay=self.config.weight_decay)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[int, Data]]:
        for k, fold in enumerate(self.folds):
            for batch in fold.batches(epoch, generator):
                yield k, batch

    def loss(self, model: torch.nn.Module, batch: tuple[int, Data]) -> BatchLoss:
        k, graphs = batch
        return student_loss(partial(model, k), graphs, self.config)

    def validate(self, model: FoldSet) -> Validation:
        losses, aucs = [], []
        for student, fold in zip(model.students, self.folds):
            batches = fold.val_graphs.batches(self.config.batch_size)
            probabilities, y, loss = predict(student, batches, fold.world.device)
            losses.append(loss)
            aucs.append(classification_metrics(y, probabilities)["auc"])
        mean = float(np.mean(losses))
        return Validation(mean, {"val_loss": mean, "val_auc": float(np.nanmean(aucs)),
                                 "val_loss_std": float(np.std(losses))})

    def test(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        pass
