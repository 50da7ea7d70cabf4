"""One reconstruction model on one split of scans as a task of the training loop (``fmgnn.engine``).

Each worker reads only its shard of the training scans (every size-th scan, padded so that every rank
runs as many steps, as ``DistributedSampler`` pads) and shuffles it every epoch; with one worker the
order is ``DistributedSampler``'s, exactly. Training masks are drawn afresh every batch from the engine's
per-epoch generator; validation and test masks are fixed by the split's seed, so every model of a seed is
scored on the same hidden windows. The epoch with the lowest validation MSE is kept and the test scans
are scored once, at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from fimp.reconstruction import ReconstructionConfig, apply_model_finetune, build_model, masked_mse
from fimp.tasks.fmri import FMRITaskConfig, load_scans, reconstruction_metrics, window_mask
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World, unwrap
from fmgnn.errors import InputError


@dataclass
class ReconstructionTrainConfig:
    """Args:
        epochs: Maximum epochs.
        batch_size: Scans per batch and worker.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: Stop after this many epochs without a lower validation MSE.
    """

    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 8


def rank_shard(rows: list[int], rank: int, size: int) -> list[int]:
    """Rank ``rank``'s fixed share of ``rows``: every size-th row, the short shards padded with their own first
    rows so that every rank has ``ceil(len(rows) / size)`` (DDP's ranks must step together)."""
    mine = rows[rank::size]
    return mine + mine[:math.ceil(len(rows) / size) - len(mine)]


@dataclass
class ReconstructionSpec:
    cohort_path: str
    train: list[int]
    val: list[int]
    test: list[int]
    task: FMRITaskConfig
    model: ReconstructionConfig
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    init_state: dict[str, torch.Tensor] | None = None  # pretrained foundation weights, loaded before training
    seed: int = 0


def fixed_masks(graphs: list[Data], ratio: float, seed: int, span: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [window_mask(g.num_nodes, g.x.shape[1], ratio, generator, span) for g in graphs]


def run_model(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, edge_index: torch.Tensor,
              batch: torch.Tensor) -> torch.Tensor:
    """Predictions (N, f, w). GPS's global attention needs each node's graph; ``model`` may be DDP-wrapped,
    so the kind is read from the model inside."""
    extra = {"batch": batch} if unwrap(model).config.kind == "gps" else {}
    return model(x, mask.to(x.device), edge_index, **extra)


class TokenReconstructionTask:
    """What the scan and the node tasks share: the model (with pretrained initial weights), its optimizer,
    validation on MSE of hidden tokens, and the export (weights, shapes, one test item for the plot)."""

    trainable_only = False

    def __init__(self, name: str, model: ReconstructionConfig, optim: ReconstructionTrainConfig,
                 init_state: dict[str, torch.Tensor] | None, seed: int, output: Path | None) -> None:
        self.name, self.model_config, self.optim, self.init_state = name, model, optim, init_state
        self.seed, self.epochs, self.patience, self.output = seed, optim.epochs, optim.patience, output

    def build_model(self) -> torch.nn.Module:
        model = build_model(self.model_config)
        if self.init_state is not None:
            result = model.load_state_dict(self.init_state, strict=False)
            if result.unexpected_keys:
                raise InputError(f"pretrained weights do not fit the model: {result.unexpected_keys[:5]}")
        return apply_model_finetune(model, self.model_config)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.optim.lr,
                                 weight_decay=self.optim.weight_decay)

    def validate(self, model: torch.nn.Module) -> Validation:
        metrics = self.evaluate(model, "val")[0]
        return Validation(metrics["mse"], {"val_loss": metrics["mse"], "val_r2": metrics["r2"]})

    def test(self, model: torch.nn.Module) -> dict[str, Any]:
        metrics, self.example = self.evaluate(model, "test")
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {**{f"test_{k}": v for k, v in metrics.items()}, "n_parameters": trained}

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        torch.save(model.state_dict(), directory / "model.pt")
        (directory / "model.json").write_text(json.dumps({"model": asdict(self.model_config),
                                                          "task": self.task_record()}))
        np.savez(directory / "example.npz", **self.example)

    def evaluate(self, model: torch.nn.Module, part: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics on ``part`` (val or test) and one item of it for the plot: target, predicted, mask."""
        raise NotImplementedError

    def task_record(self) -> Any:
        raise NotImplementedError


class ReconstructionTask(TokenReconstructionTask):
    """One model on one split of scans (a graph per scan)."""

    def __init__(self, name: str, spec: ReconstructionSpec, output: Path | None = None) -> None:
        super().__init__(name, spec.model, spec.optim, spec.init_state, spec.seed, output)
        self.spec = spec

    def setup(self, world: World) -> None:
        self.world = world
        cohort = Cohort(self.spec.cohort_path)
        self.train = load_scans(cohort, rank_shard(self.spec.train, world.rank, world.size), self.spec.task)
        self.parts = {"val": load_scans(cohort, self.spec.val, self.spec.task),
                      "test": load_scans(cohort, self.spec.test, self.spec.task)}
        task = self.spec.task
        self.masks = {part: fixed_masks(graphs, task.mask_ratio, offset + self.spec.seed, task.mask_span)
                      for (part, graphs), offset in zip(self.parts.items(), (10_000, 20_000))}

    def batches(self, epoch: int, generator: torch.Generator) -> Any:
        # torch's DataLoader, which this loop replaces, drew one value of the global RNG per pass; drawn here
        # too, so that the draws that follow (dropout) are those of runs before the shards.
        torch.empty((), dtype=torch.int64).random_()
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.seed + epoch))
        for start in range(0, len(order), self.optim.batch_size):
            batch = Batch.from_data_list([self.train[i] for i in order[start:start + self.optim.batch_size]])
            yield batch, window_mask(batch.num_nodes, batch.x.shape[1], self.spec.task.mask_ratio, generator,
                                     self.spec.task.mask_span)

    def loss(self, model: torch.nn.Module, batch: tuple[Data, torch.Tensor]) -> BatchLoss:
        graphs, mask = batch
        predicted = run_model(model, graphs.x, mask, graphs.edge_index, graphs.batch)
        return BatchLoss(masked_mse(predicted, graphs.x, mask), graphs.num_graphs)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        model.eval()
        graphs, masks, size = self.parts[part], self.masks[part], self.optim.batch_size
        predictions, targets = [], []
        for start in range(0, len(graphs), size):
            batch = next(iter(DataLoader(graphs[start:start + size], batch_size=size))).to(self.world.device)
            mask = torch.cat(masks[start:start + size]).to(self.world.device)
            predictions.append(run_model(model, batch.x, mask, batch.edge_index, batch.batch).cpu())
            targets.append(batch.x.cpu())
        predicted, target, mask = torch.cat(predictions), torch.cat(targets), torch.cat(masks)
        # One scan's first region: (f, w) true, predicted, mask.
        example = {"target": target[0].numpy(), "predicted": predicted[0].numpy(), "mask": mask[0].numpy()}
        return reconstruction_metrics(predicted, target, mask), example

    def task_record(self) -> Any:
        return asdict(self.spec.task)
