"""The training loop run by a Tune trial itself, with no Ray Train worker group (``ray.num_workers=0``).

A sweep trial over a small cohort trains in milliseconds per epoch; a ``TorchTrainer`` per trial adds
a controller and a worker process that import torch and PyG (about 17-30 s on 2 cores,
bench/RESULTS.md), more than the trial's training. With ``ray.num_workers=0`` the trial's own actor
runs ``fmgnn.engine.fit`` and reports each epoch to Tune, checkpoint included, so ASHA, a restored
sweep and the trial's resume behave as under Ray Train.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune
from torch import nn

from fmgnn.engine import CHECKPOINT_FILE, Precision, World


class TuneTrialRuntime:
    """The loop's runtime in a Tune function trainable: one process, Tune's checkpoints and reports."""

    def __init__(self, device: torch.device | None = None, precision: Precision = "fp32") -> None:
        self.world = World(device=device or torch.device("cpu"), precision=precision)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.world.device)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        checkpoint = tune.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False, map_location="cpu")

    def report(self, metrics: dict[str, Any], payload: dict[str, Any] | None) -> None:
        if payload is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(payload, Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
