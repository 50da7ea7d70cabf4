"""One reconstruction model on one split of scans as a task of the training loop (``fmgnn.engine``).

Each worker reads only its shard of the training scans (every size-th scan, padded so that every rank runs
as many steps, as ``DistributedSampler`` pads) and shuffles it every epoch; with one worker the order is
``DistributedSampler``'s, exactly. It reads and scores its share of the validation and test scans too (every
size-th, unpadded), and the metrics' sums are added over the workers. Training masks are drawn afresh every
batch from the engine's per-epoch generator; validation and test masks are fixed by the split's seed, so
every model of a seed is scored on the same hidden windows. The epoch with the lowest validation MSE is kept
and the test scans are scored once, at the end.
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
from fimp.tasks.fmri import FMRITaskConfig, load_scans, metrics_from_sums, reconstruction_sums, window_mask
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World, sum_over_ranks, unwrap
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


def fixed_masks(n_nodes: list[int], n_windows: int, ratio: float, seed: int,
                span: bool = False) -> list[torch.Tensor]:
    """The hidden windows of a validation or test part, one (nodes, windows) mask per scan, drawn in order."""
    generator = torch.Generator().manual_seed(seed)
    return [window_mask(n, n_windows, ratio, generator, span) for n in n_nodes]


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
        cohort, task = Cohort(self.spec.cohort_path), self.spec.task
        self.train = load_scans(cohort, rank_shard(self.spec.train, world.rank, world.size), task)
        # Validation and test: each rank reads and scores every size-th scan, and the sums behind the metrics
        # add over ranks. The hidden windows are drawn for the whole part, in its order, so that a scan hides
        # the same windows whatever the number of workers.
        self.parts, self.masks = {}, {}
        for part, rows, offset in (("val", self.spec.val, 10_000), ("test", self.spec.test, 20_000)):
            masks = fixed_masks([cohort.n_rois] * len(rows), task.n_windows, task.mask_ratio, offset + self.spec.seed,
                                task.mask_span)
            mine = range(world.rank, len(rows), world.size)
            self.parts[part] = load_scans(cohort, [rows[i] for i in mine], task)
            self.masks[part] = [masks[i] for i in mine]

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
        sums, example = torch.zeros(4, dtype=torch.float64), {}
        for start in range(0, len(graphs), size):
            batch = next(iter(DataLoader(graphs[start:start + size], batch_size=size))).to(self.world.device)
            mask = torch.cat(masks[start:start + size]).to(self.world.device)
            predicted = run_model(model, batch.x, mask, batch.edge_index, batch.batch)
            sums += reconstruction_sums(predicted, batch.x, mask).cpu()
            if not example:  # the part's first scan's first region (rank 0's): (f, w) true, predicted, mask
                example = {"target": batch.x[0].cpu().numpy(), "predicted": predicted[0].cpu().numpy(),
                           "mask": mask[0].cpu().numpy()}
        return metrics_from_sums(sum_over_ranks(sums, self.world)), example

    def task_record(self) -> Any:
        return asdict(self.spec.task)
