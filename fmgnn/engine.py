"""The one training loop of fmgnn: every model (GCN baseline, BLEG stages 2 and 3, a sweep trial, FIMP
and its baselines, pretraining) is a ``TrainTask`` run by ``fit``.

The loop owns what every model needs and what had drifted between six copies:

- seeding: ``torch.manual_seed`` per epoch and rank (``seed_epoch``), and a generator seeded the same
  way for the task's own draws (masks, masked-LM positions), so a run resumed from a checkpoint is the
  same computation as an uninterrupted one;
- ``runtime.prepare`` (DDP under Ray Train) and unwrapping for validation, test and export;
- one checkpoint format (model, optimizer, ``TrainState``), written every epoch and restored on start;
- early stopping on the task's validation score (lower is better), keeping the best epoch's weights;
- the test part scored once, after training, with those weights; then the export.

A task is plain PyTorch: it builds its data, model and optimizer, gives the loss of one batch and
validates. ``fit`` runs in one process without Ray (``LocalRuntime``); ``fmgnn.ray_runtime`` wraps it
for Ray Train at the prepare and report points, as in Ray's own examples. ``fit_tasks`` runs several
tasks (the folds of a stage) one after another in the same worker group: Ray Train's start-up is paid
once per group, not once per fold, and each task keeps its own checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from fmgnn.io import atomic_dir

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PROGRESS_INTERVAL_S = 30.0  # a task that trains longer logs a progress line at least this often
CHECKPOINT_FILE = "state.pt"
RESULT_FILE = "result.json"  # in a task's output folder: the task is done


@dataclass
class World:
    """Where this process sits in its worker group, and the arithmetic its training steps use
    (``precision``: ``fp32``, or ``bf16`` autocast of the training forward passes)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"


def training_autocast(world: World) -> contextlib.AbstractContextManager:
    """bf16 autocast of a training step's forward pass, or nothing (fp32). Validation and test run in
    fp32: their metrics and exports are records, read on any machine."""
    if world.precision == "bf16":
        return torch.autocast(device_type=world.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_tensor_cores(device: torch.device) -> None:
    """TF32 matmuls on CUDA (Ampere and later): float32 storage, 10-bit mantissa products, several times the
    fp32 rate; no effect on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass
class BatchLoss:
    """The loss of one batch: the tensor to minimise, how many items it averages, and named parts to log."""

    value: torch.Tensor
    size: int
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Validation:
    """A validation pass: ``score`` picks the epoch (lower is better); ``metrics`` go into the epoch record."""

    score: float
    metrics: dict[str, float]


class TrainTask(Protocol):
    """One model trained on one split. Attributes read by the loop:

    ``name`` (unique within a stage; checkpoints carry it), ``seed``, ``epochs``, ``patience``,
    ``trainable_only`` (checkpoint only trained weights and buffers: a frozen LM is not copied each epoch),
    ``output`` (a folder that receives the export and ``result.json``; None: nothing is written).
    """

    name: str
    seed: int
    epochs: int
    patience: int
    trainable_only: bool
    output: Path | None

    def setup(self, world: World) -> None:
        """Load data (this rank's shard of the training part)."""

    def build_model(self) -> nn.Module: ...

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def batches(self, epoch: int, generator: torch.Generator) -> Iterable[Any]:
        """This rank's training batches of one epoch; ``generator`` is seeded per epoch and rank."""

    def loss(self, model: nn.Module, batch: Any) -> BatchLoss:
        """Loss of one training batch; ``model`` may be wrapped (DDP): call it, don't reach inside."""

    def validate(self, model: nn.Module) -> Validation: ...

    def test(self, model: nn.Module) -> dict[str, Any]:
        """Metrics on the test part (once, best weights); {} for tasks without one."""

    def export(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model (best weights) into ``directory``."""


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
    seconds: float = 0.0  # training and validation time over every attempt

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


class Runtime(Protocol):
    """What the loop needs from its surroundings: one process, or a Ray Train worker."""

    world: World

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The payload of this run's latest checkpoint (any task's), or None."""

    def report(self, metrics: dict[str, Any], payload: dict[str, Any] | None) -> None:
        """Report an epoch; ``payload`` is the checkpoint to keep (written by rank 0 only)."""


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed torch's RNG for one epoch of one rank; returns the seed (epoch -1: model initialisation)."""
    value = (seed * 100_003 + epoch + 1) * 1_009 + rank
    torch.manual_seed(value)
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Detached host copies of the weights (a GPU's memory holds one model, not its best epoch too, and a
    checkpoint loads anywhere); with ``trainable_only``, trained parameters and all buffers."""
    model = unwrap(model)
    keep = None if not trainable_only else \
        {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if keep is None or k in keep}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full or trainable-only weights; a key the model lacks is an error (a checkpoint of another model)."""
    result = unwrap(model).load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint does not fit the model: unexpected keys {result.unexpected_keys[:5]}")


def is_done(task: TrainTask) -> bool:
    return task.output is not None and (Path(task.output) / RESULT_FILE).is_file()


def read_result(output: Path) -> dict[str, Any]:
    """The final metrics a finished task left in its output folder."""
    return json.loads((Path(output) / RESULT_FILE).read_text())


def restore(task: TrainTask, runtime: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """This task's state from the run's latest checkpoint; a fresh state when that belongs to another task."""
    saved = runtime.latest_checkpoint()
    if not saved or saved.get("task") != task.name:
        return TrainState()
    load_model_state(model, saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    state: TrainState = saved["state"]
    state.resumed_at = [*state.resumed_at, state.epoch + 1]
    log.info("%s: resuming after epoch %d", task.name, state.epoch)
    return state


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors, PyG batches and dicts or tuples of them on ``device``; anything else as it is."""
    if device.type == "cpu":
        return batch
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)  # overlaps the step when the loader pinned the batch
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def train_epoch(task: TrainTask, model: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterable[Any], world: World, epoch: int) -> dict[str, float]:
    """One pass over this rank's batches; mean loss (and its named parts) per item."""
    model.train()
    sums: dict[str, torch.Tensor | float] = {}
    count = 0
    last_progress = time.monotonic()
    for step, batch in enumerate(batches, 1):
        with training_autocast(world):
            loss = task.loss(model, to_device(batch, world.device))
        optimizer.zero_grad()
        loss.value.backward()
        optimizer.step()
        # Summed where the loss lives: reading a GPU value every batch would wait for the device each step.
        for key, value in {"train_loss": loss.value, **loss.parts}.items():
            sums[key] = sums.get(key, 0.0) + (value.detach() if torch.is_tensor(value) else value) * loss.size
        count += loss.size
        # An epoch can outlast the progress interval (BLEG stage 2 on ABIDE: a language model over 750 texts).
        if world.rank == 0 and time.monotonic() - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = time.monotonic()
            log.info("%s: epoch %d, %d batches (%d items) trained so far", task.name, epoch, step, count)
    return {k: float(v) / max(count, 1) for k, v in sums.items()}


def in_process_group(world: World) -> bool:
    """Whether this rank shares a torch.distributed process group with others (collectives are needed)."""
    return world.size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_zero_score(score: float, world: World) -> float:
    """Rank 0's validation score, on every rank of a process group; ``score`` when there is none.

    Early stopping and the best epoch follow the score. Decided on each rank apart, they can differ (CUDA
    scatter is not deterministic, so ranks validating the same weights need not agree to the last bit),
    and a rank that stops leaves the others waiting in their next collective until it times out.
    """
    if not in_process_group(world):
        return score
    value = torch.tensor([score], dtype=torch.float64, device=world.device)  # gloo on the CPU, NCCL on a GPU
    torch.distributed.broadcast(value, src=0)
    return float(value.item())


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """``values`` summed over the ranks of this worker group (each rank scored its own shard of a part); the
    same tensor when there is one rank. Every rank must call it."""
    if not in_process_group(world):
        return values
    total = values.to(world.device, copy=True)  # gloo on the CPU, NCCL on a GPU
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total.to(values.device)


def peak_rss_mb(world: World) -> float:
    """The largest peak resident memory of this worker group's processes so far (MB): what a worker needs."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not in_process_group(world):
        return round(peak, 1)
    value = torch.tensor([peak], dtype=torch.float64, device=world.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return round(float(value.item()), 1)


@torch.no_grad()
def refresh_batch_norm(task: TrainTask, model: nn.Module, batches: Iterable[Any], world: World) -> None:
    """BatchNorm's running statistics recomputed over ``batches`` with the weights as they are now.

    Running statistics are a moving average over the steps of training, each step with other weights; a
    small cohort takes two or three steps an epoch while its weights move fast, so after an epoch the
    averages describe none of the weights they are used with. Validated with them, the GCN of the main
    job's sample predicted one class for every subject, training subjects included, while the same weights
    with batch statistics separated the classes (precise BatchNorm: Wu and Johnson, "Rethinking 'Batch' in
    BatchNorm", 2021; ``torch.optim.swa_utils.update_bn`` does this for models called on one tensor). A
    frozen BatchNorm (in eval mode inside a training model) keeps its statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over this pass's batches
    # A task whose BatchNorm sits in a small part of a large model (BLEG stage 2: the GCN before an LM)
    # runs that part only (``norm_forward``); any other runs its loss.
    forward = getattr(task, "norm_forward", None) or task.loss
    for batch in batches:
        with training_autocast(world):
            forward(model, to_device(batch, world.device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def fit(task: TrainTask, runtime: Runtime) -> dict[str, Any]:
    """Train ``task`` to its end (resuming from the run's checkpoint), test once, export; final metrics."""
    world = runtime.world
    use_tensor_cores(world.device)
    seed_epoch(task.seed, -1)  # the same initial weights on every rank and in every runtime
    task.setup(world)
    model = task.build_model()
    optimizer = task.build_optimizer(model)
    model = runtime.prepare(model)
    state = restore(task, runtime, model, optimizer)

    def payload() -> dict[str, Any] | None:
        if world.rank != 0:  # only rank 0's checkpoint is kept
            return None
        return {"task": task.name, "model": model_state(model, task.trainable_only),
                "optimizer": optimizer.state_dict(), "state": state}

    last_progress = time.monotonic()
    while not state.finished(task.epochs):
        epoch, started = state.epoch + 1, time.monotonic()
        generator = torch.Generator().manual_seed(seed_epoch(task.seed, epoch, world.rank))
        losses = train_epoch(task, model, optimizer, task.batches(epoch, generator), world, epoch + 1)
        generator.manual_seed(seed_epoch(task.seed, epoch, world.rank))  # the epoch's batches again
        refresh_batch_norm(task, model, task.batches(epoch, generator), world)
        validation = task.validate(unwrap(model))
        state.seconds += time.monotonic() - started
        # Cumulative seconds per epoch: what comparisons at equal training time read.
        record = {"epoch": epoch, **losses, **validation.metrics, "seconds": round(state.seconds, 2)}
        state.update(model, record, rank_zero_score(validation.score, world), task.patience, task.trainable_only)
        if world.rank == 0 and time.monotonic() - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = time.monotonic()
            log.info("%s: epoch %d of at most %d, train loss %.4f, validation score %.4f (best %.4f at epoch %d), "
                     "%.0f s so far", task.name, epoch + 1, task.epochs, losses.get("train_loss", float("nan")),
                     validation.score, state.best_score, state.best_epoch + 1, state.seconds)
        if not state.finished(task.epochs):  # the last epoch is reported below, with the test metrics
            runtime.report({"task": task.name, **record, "best_score": state.best_score,
                            "best_epoch": state.best_epoch, "done": False}, payload())

    # The checkpoint holds the last epoch's weights, so that a rerun with more epochs continues training;
    # the test part is scored once, with the weights chosen on validation.
    final_payload = payload()
    load_model_state(model, state.best_model)
    final = {"task": task.name, **state.history[-1], "best_score": state.best_score, "best_epoch": state.best_epoch,
             "history": state.history, "resumed_at": state.resumed_at, "seconds": round(state.seconds, 2), "done": True,
             "world_size": world.size, **task.test(unwrap(model))}
    final["peak_rss_mb"] = peak_rss_mb(world)  # after the test part: the most this task made a worker hold
    if task.output is not None and world.rank == 0:
        with atomic_dir(Path(task.output)) as directory:
            task.export(unwrap(model), directory)
            (directory / RESULT_FILE).write_text(json.dumps(final))
    runtime.report(final, final_payload)
    return final


def fit_tasks(tasks: list[TrainTask], runtime: Runtime) -> list[dict[str, Any]]:
    """Run tasks one after another in this worker group, skipping those whose output says they are done.

    What a task's ``setup`` loaded (its cohort, its graphs) is dropped once the task is done, so that a
    group holds one task's data at a time, not every finished fold's."""
    results = []
    for task in tasks:
        if is_done(task):
            results.append(read_result(task.output))
            continue
        configured = set(vars(task))
        results.append(fit(task, runtime))
        for name in set(vars(task)) - configured:
            delattr(task, name)
    return results


def local_device(use_gpu: bool) -> torch.device:
    """The device of a run in this process: the first CUDA device when ``use_gpu``, else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from fmgnn.errors import InputError

        raise InputError("ray.use_gpu=true: this process sees no CUDA device (torch.cuda.is_available() is "
                         "False); set ray.use_gpu=false, or run where a GPU is")
    return torch.device("cuda", torch.cuda.current_device())


class LocalRuntime:
    """One process, no Ray: the model on ``device``; checkpoints in ``checkpoint_dir`` (the latest only) when
    given; reports kept."""

    def __init__(self, checkpoint_dir: Path | None = None, device: torch.device | None = None,
                 precision: Precision = "fp32") -> None:
        self.world = World(device=device or torch.device("cpu"), precision=precision)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.reports: list[dict[str, Any]] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.world.device)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        return torch.load(path, weights_only=False, map_location="cpu") if path and path.is_file() else None

    def report(self, metrics: dict[str, Any], payload: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        if self.checkpoint_dir is not None and payload is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.checkpoint_dir, delete=False) as tmp:
                torch.save(payload, tmp)
            Path(tmp.name).replace(self.checkpoint_dir / CHECKPOINT_FILE)


def run_local(tasks: list[TrainTask], checkpoint_dir: Path | None = None, device: torch.device | None = None,
              precision: Precision = "fp32") -> list[dict[str, Any]]:
    """``fit_tasks`` in this process: the plain loop of tests, benchmarks and ``ray.num_workers=0``."""
    return fit_tasks(tasks, LocalRuntime(checkpoint_dir, device, precision))
