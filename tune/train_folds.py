"""Training function of one sweep trial: one stage-3 configuration trained on K folds in lockstep.

Every epoch trains each fold's student once and reports the mean validation cross-entropy and AUC
over the folds, so that ASHA compares trials on the cross-validated objective at every epoch.
Test subjects are never scored here; the sweep's best configuration is retrained per fold and
tested afterwards by ``fmgnn train bleg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

from bleg.graph_encoder import GraphEncoderConfig
from bleg.train_student import AlignmentConfig, StudentSpec, attach_targets, build_student, predict, train_epoch
from fmgnn.baselines.train_gcn import load_graphs
from fmgnn.cohort import Cohort
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.evaluation.splits import Split
from fmgnn.graphs import GraphConfig
from fmgnn.ray_logging import quiet_report_logs
from fmgnn.train_state import report_epoch, restore


@dataclass
class FoldInput:
    """What stage 3 of one fold needs from stages 1-2 (fixed across trials)."""

    split: Split
    encoder_state: dict[str, torch.Tensor]
    targets: dict[str, np.ndarray]


@dataclass
class SweepSpec:
    cohort_path: str
    graph: GraphConfig
    encoder: GraphEncoderConfig
    folds: list[FoldInput]
    stage3: AlignmentConfig
    seed: int = 0


class FoldSet(torch.nn.Module):
    """The K fold students as one module, so that one state dict and one optimizer hold them all."""

    def __init__(self, students: list[torch.nn.Module]) -> None:
        super().__init__()
        self.students = torch.nn.ModuleList(students)


def train_folds(config: dict) -> None:
    spec: SweepSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    cohort = Cohort(spec.cohort_path)
    ids = cohort.subject_ids()
    specs, loaders, samplers, val_graphs = [], [], [], []
    for fold in spec.folds:
        fold_spec = StudentSpec(spec.cohort_path, fold.split, spec.graph, spec.stage3, spec.encoder,
                                fold.encoder_state, fold.targets, spec.seed)
        train = load_graphs(cohort, fold.split.train, spec.graph)
        if spec.stage3.lam > 0:
            attach_targets(train, [str(ids[i]) for i in fold.split.train], fold_spec)
        sampler = DistributedSampler(train, num_replicas=context.get_world_size(), rank=context.get_world_rank(),
                                     shuffle=True, seed=spec.seed)
        specs.append(fold_spec)
        samplers.append(sampler)
        loaders.append(DataLoader(train, batch_size=spec.stage3.batch_size, sampler=sampler))
        val_graphs.append(load_graphs(cohort, fold.split.val, spec.graph))

    folds = FoldSet([build_student(s, cohort.n_classes) for s in specs])
    optimizers = [torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=spec.stage3.lr,
                                    weight_decay=spec.stage3.weight_decay) for student in folds.students]
    optimizer = _Optimizers(optimizers)
    folds = ray.train.torch.prepare_model(folds)  # Ray: DDP when there is more than one worker
    state = restore(folds, optimizer)
    if state.finished(spec.stage3.epochs) and state.history:
        # Restarted after its last epoch (the sweep was killed before Tune recorded the trial as done):
        # report the final epoch again, or this attempt would end with no result for Tune.
        report_epoch(state, folds, optimizer, {**state.history[-1], "best_val_loss": state.best_score,
                                               "best_epoch": state.best_epoch})
    while not state.finished(spec.stage3.epochs):
        epoch = state.epoch + 1
        losses, aucs = [], []
        module = folds.module if hasattr(folds, "module") else folds
        for student, sampler, loader, opt, val in zip(module.students, samplers, loaders, optimizers, val_graphs):
            sampler.set_epoch(epoch)
            train_epoch(student, loader, opt, spec.stage3)
            probabilities, y, val_loss = predict(student, val, spec.stage3.batch_size)
            losses.append(val_loss)
            aucs.append(classification_metrics(y, probabilities)["auc"])
        record = {"epoch": epoch, "val_loss": float(np.mean(losses)), "val_auc": float(np.nanmean(aucs)),
                  "val_loss_std": float(np.std(losses))}
        state.update(folds, record, record["val_loss"], spec.stage3.patience)
        # Every epoch reports, the last one too: Tune's schedulers act on these reports.
        report_epoch(state, folds, optimizer, {**record, "best_val_loss": state.best_score,
                                               "best_epoch": state.best_epoch})


class _Optimizers:
    """Several optimizers saved and restored as one (one per fold)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)

