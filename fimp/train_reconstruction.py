"""Training function of one reconstruction model on one split of scans: plain PyTorch that Ray Train wraps.

Training masks are drawn afresh every epoch; validation and test masks are fixed by the split's
seed, so every model of a seed is scored on the same hidden windows. The epoch with the lowest
validation MSE is kept and the test scans are scored once, at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from fimp.reconstruction import ReconstructionConfig, build_model, masked_mse
from fimp.tasks.fmri import FMRITaskConfig, load_scans, reconstruction_metrics, window_mask
from fmgnn.cohort import Cohort
from fmgnn.ray_logging import quiet_report_logs
from fmgnn.train_state import TrainState, load_model_state, report_epoch, restore, unwrap


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


def fixed_masks(graphs: list[Data], ratio: float, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [window_mask(g.num_nodes, g.x.shape[1], ratio, generator) for g in graphs]


def run_model(model: torch.nn.Module, batch: Data, mask: torch.Tensor) -> torch.Tensor:
    extra = {"batch": batch.batch} if getattr(model, "config", None) and model.config.kind == "gps" else {}
    return model(batch.x, mask, batch.edge_index, **extra)


@torch.no_grad()
def evaluate(model: torch.nn.Module, graphs: list[Data], masks: list[torch.Tensor],
             batch_size: int) -> tuple[dict[str, float], list[torch.Tensor]]:
    model.eval()
    predictions, targets, all_masks = [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = next(iter(DataLoader(graphs[start:start + batch_size], batch_size=batch_size)))
        mask = torch.cat(masks[start:start + batch_size])
        predictions.append(run_model(model, batch, mask))
        targets.append(batch.x)
        all_masks.append(mask)
    predicted, target, mask = torch.cat(predictions), torch.cat(targets), torch.cat(all_masks)
    return reconstruction_metrics(predicted, target, mask), [predicted, target, mask]


def end_epoch(state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
              train_loss: float, val_metrics: dict[str, float], optim: ReconstructionTrainConfig) -> None:
    """Record the epoch (the lowest validation MSE is the best) and checkpoint it unless it is the last:
    the last epoch's report carries the test metrics and the exported model."""
    record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_metrics["mse"], "val_r2": val_metrics["r2"]}
    state.update(model, record, val_metrics["mse"], optim.patience)
    if not state.finished(optim.epochs):
        report_epoch(state, model, optimizer, {**record, "done": False})


def train_reconstruction(config: dict) -> None:
    spec: ReconstructionSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    cohort = Cohort(spec.cohort_path)
    train = load_scans(cohort, spec.train, spec.task)
    val = load_scans(cohort, spec.val, spec.task)
    val_masks = fixed_masks(val, spec.task.mask_ratio, 10_000 + spec.seed)

    model = build_model(spec.model)
    if spec.init_state is not None:
        missing = model.load_state_dict(spec.init_state, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"pretrained weights do not fit the model: {missing.unexpected_keys[:5]}")
    sampler = DistributedSampler(train, num_replicas=context.get_world_size(), rank=context.get_world_rank(),
                                 shuffle=True, seed=spec.seed)
    loader = DataLoader(train, batch_size=spec.optim.batch_size, sampler=sampler)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.optim.lr,
                                  weight_decay=spec.optim.weight_decay)
    model = ray.train.torch.prepare_model(model)  # Ray: DDP when there is more than one worker
    state = restore(model, optimizer)
    generator = torch.Generator()
    while not state.finished(spec.optim.epochs):
        epoch = state.epoch + 1
        sampler.set_epoch(epoch)
        generator.manual_seed(spec.seed * 100_003 + epoch * 101 + context.get_world_rank())
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            mask = window_mask(batch.num_nodes, batch.x.shape[1], spec.task.mask_ratio, generator)
            loss = masked_mse(run_model(model, batch, mask), batch.x, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        val_metrics, _ = evaluate(unwrap(model), val, val_masks, spec.optim.batch_size)
        end_epoch(state, model, optimizer, epoch, total / max(count, 1), val_metrics, spec.optim)

    load_model_state(model, state.best_model)
    test = load_scans(cohort, spec.test, spec.task)
    test_metrics, (predicted, target, mask) = evaluate(unwrap(model), test, fixed_masks(test, spec.task.mask_ratio,
                                                                                        20_000 + spec.seed),
                                                        spec.optim.batch_size)

    def export(directory: Path) -> None:
        torch.save(unwrap(model).state_dict(), directory / "model.pt")
        (directory / "model.json").write_text(json.dumps({"model": asdict(spec.model), "task": asdict(spec.task)}))
        # One test scan's first region, for the reconstruction plot: (f, w) true, predicted, mask.
        np.savez(directory / "example.npz", target=target[0].numpy(), predicted=predicted[0].numpy(),
                 mask=mask[0].numpy())

    report_epoch(state, model, optimizer, {**state.history[-1], "best_epoch": state.best_epoch,
                                           "history": state.history, "done": True,
                                           **{f"test_{k}": v for k, v in test_metrics.items()}}, export=export)
