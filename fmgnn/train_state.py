"""Per-epoch checkpoints of a Ray Train training function: save, resume, keep the best epoch.

Every epoch rank 0 writes the model, the optimizer and a ``TrainState`` (epoch, best validation
score and weights, history) and reports them with ``ray.train.report``. A rerun with the same run
name, or a restart after a worker died, finds the latest checkpoint with
``ray.train.get_checkpoint()`` and continues after that epoch, so a failure costs at most one epoch.
Models whose frozen part is large (a language model under LoRA) save only what trains.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
from torch import nn

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainState:
    """Where a run is: the last finished epoch and the best one so far (lower score is better)."""

    epoch: int = -1
    best_score: float = float("inf")
    best_epoch: int = -1
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_at: list[int] = field(default_factory=list)  # first epoch of each resume from a checkpoint

    def finished(self, max_epochs: int) -> bool:
        return self.stopped_early or self.epoch + 1 >= max_epochs

    def update(self, model: nn.Module, record: dict[str, Any], score: float, patience: int,
               trainable_only: bool = False) -> None:
        """Record an epoch; keep its weights when ``score`` is the best so far."""
        self.epoch = record["epoch"]
        self.history.append(record)
        if score < self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
            self.best_model = model_state(model, trainable_only)
        self.stopped_early = self.epoch - self.best_epoch >= patience


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed torch's RNG for one epoch; returns the seed.

    Seeding per epoch (not once per run) makes a run resumed from a checkpoint draw the same dropout
    masks as an uninterrupted one, so a killed worker changes no result.
    """
    value = (seed * 100_003 + epoch) * 1_009 + rank
    torch.manual_seed(value)
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Detached copies of the weights; with ``trainable_only``, trained parameters and all buffers."""
    model = unwrap(model)
    if not trainable_only:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keep}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full or trainable-only weights; a key the model lacks is an error (a checkpoint of another model)."""
    result = unwrap(model).load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint does not fit the model: unexpected keys {result.unexpected_keys[:5]}")


def restore(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> TrainState:
    """Load the latest checkpoint of this run into ``model`` and ``optimizer``; a fresh state if none."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return TrainState()
    with checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)
    load_model_state(model, saved["model"])
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    state = saved["state"]
    state.resumed_at = [*getattr(state, "resumed_at", []), state.epoch + 1]  # older checkpoints lack the field
    return state


@contextmanager
def checkpoint_dir() -> Iterator[Path | None]:
    """A temp folder for rank 0's checkpoint files; None on the other ranks."""
    if ray.train.get_context().get_world_rank() != 0:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def report_epoch(state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer, metrics: dict[str, Any],
                 trainable_only: bool = False, export: Callable[[Path], None] | None = None) -> None:
    """Report an epoch's metrics with a checkpoint that ``restore`` reads back.

    ``export`` writes more files into the checkpoint (the final model in Hugging Face format).
    """
    with checkpoint_dir() as directory:
        if directory is not None:
            torch.save({"model": model_state(model, trainable_only), "optimizer": optimizer.state_dict(),
                        "state": state}, directory / CHECKPOINT_FILE)
            if export is not None:
                export(directory)
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)
