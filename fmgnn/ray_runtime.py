"""Ray Train's side of the one training loop: the marked prepare, checkpoint and report points.

``train_worker`` is the function every ``TorchTrainer`` of fmgnn runs: the tasks of one worker group
(the folds of a stage, or one), each through ``fmgnn.engine.fit``. A restarted worker group (a dead
worker or node, ``max_failures``) skips the tasks whose output is complete and resumes the current
one from the run's latest checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.cloudpickle
import ray.train
import ray.train.torch
import torch
from torch import nn

from fmgnn.engine import CHECKPOINT_FILE, Precision, TrainTask, World, fit_tasks
from fmgnn.ray_logging import quiet_report_logs


class RayTrainRuntime:
    """The loop's runtime inside a Ray Train worker."""

    def __init__(self, precision: Precision = "fp32") -> None:
        context = ray.train.get_context()
        self.world = World(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(),
                           precision)

    def prepare(self, model: nn.Module) -> nn.Module:
        # Ray: DDP when there is more than one worker; models that run a part per step (a sweep's fold set)
        # say so, since DDP otherwise waits for gradients of the parts that did not run.
        unused = getattr(model, "ddp_find_unused_parameters", False)
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True} if unused else None)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False, map_location="cpu")

    def report(self, metrics: dict[str, Any], payload: dict[str, Any] | None) -> None:
        if payload is None or self.world.rank != 0:
            ray.train.report(metrics)  # Ray: every rank reports; rank 0 carries the checkpoint
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(payload, Path(directory) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def pickle_tasks(tasks: list[TrainTask]) -> bytes:
    """A trainer's tasks as bytes that only ``train_worker`` unpickles (see pipelines.trainers.make_trainer)."""
    return ray.cloudpickle.dumps(tasks)


def train_worker(config: dict[str, Any]) -> None:
    """The training function of every fmgnn trainer: the pickled ``config["tasks"]`` one after another."""
    quiet_report_logs()
    tasks: list[TrainTask] = ray.cloudpickle.loads(config["tasks"])
    fit_tasks(tasks, RayTrainRuntime(config.get("precision", "fp32")))
