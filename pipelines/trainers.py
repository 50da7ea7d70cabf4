"""Building and running Ray Train trainers for the jobs: one per fold (and stage), several at once."""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import ray
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.ray_session import RayConfig


def resolve_storage_path(storage_path: str | None, run_dir: str | Path) -> str:
    """Cloud URIs as given; local paths made absolute, since Ray Train workers run elsewhere."""
    if storage_path and "://" in storage_path:
        return storage_path
    return str(Path(storage_path or Path(run_dir) / "ray_results").resolve())


def make_trainer(train_fn: Callable[[dict], None], spec: Any, name: str, config: RayConfig,
                 storage_path: str, callbacks: list[Any] | None = None) -> TorchTrainer:
    """A TorchTrainer of ``train_fn`` over ``config.num_workers`` workers; ``name`` makes reruns resume."""
    return TorchTrainer(
        train_fn,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=storage_path,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=config.train_log_level),
            callbacks=callbacks,
        ),
    )


@ray.remote(num_cpus=0)
def fit_remote(trainer: TorchTrainer) -> tuple[dict[str, Any], Checkpoint | None]:
    """Run a trainer's ``fit`` from a task, so that several folds train at once."""
    result = trainer.fit()
    return result.metrics, result.checkpoint


def fit(trainer: TorchTrainer, in_process: bool) -> ray.ObjectRef | tuple[dict[str, Any], Checkpoint | None]:
    """Start a fit: a task ref, or (``num_workers=0``, Ray Train's local mode) its result, in this process."""
    if in_process:
        result = trainer.fit()
        return result.metrics, result.checkpoint
    return fit_remote.remote(trainer)


Steps = Generator[Any, Any, None]


def run_steps(jobs: list[Steps], max_active: int) -> None:
    """Drive generators that yield Ray object refs (or ready values) and receive their results.

    Each generator is one fold's chain of steps (stage 2 -> teacher -> stage 3); up to
    ``max_active`` chains are in flight at once, each waiting only on its own refs.
    """
    queue, pending = list(jobs), {}

    def advance(job: Steps, value: Any) -> None:
        while True:
            try:
                step = job.send(value)
            except StopIteration:
                return
            if isinstance(step, ray.ObjectRef):
                pending[step] = job
                return
            value = step  # computed in this process already: feed it straight back

    while queue or pending:
        while queue and len(pending) < max_active:
            advance(queue.pop(0), None)
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            advance(job, ray.get(ready[0]))
