"""Launching the training loop's tasks: a stage's tasks on a few Ray Train worker groups, or in this process.

A stage (the GCN folds of a baseline run, BLEG's stage 2 of every fold, ...) is a list of tasks. They
are dealt round-robin to ``ray.max_concurrent_runs`` trainers, each of which runs its tasks one after
another in one worker group (``fmgnn.ray_runtime.train_worker``), so Ray Train's start-up is paid
once per group, not once per fold. A trainer's run name depends only on the stage and the group, so
a rerun (or a restart after a failure) resumes it: finished tasks are skipped by their output folders
and the current one continues from its last checkpoint. With ``ray.num_workers=0`` the tasks run in
this process with no Ray Train at all (checkpoints under the storage path, resume the same way).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from fmgnn.engine import TrainTask, is_done, local_device, run_local
from fmgnn.errors import InputError
from fmgnn.ray_runtime import pickle_tasks, train_worker
from pipelines.ray_session import RayConfig, node_resources

log = logging.getLogger(__name__)


def resolve_storage_path(storage_path: str | None, run_dir: str | Path) -> str:
    """Cloud URIs as given; local paths made absolute, since Ray Train workers run elsewhere."""
    if storage_path and "://" in storage_path:
        return storage_path
    return str(Path(storage_path or Path(run_dir) / "ray_results").resolve())


@ray.remote(num_cpus=0)
def missing_files(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def check_shared_folders(folders: list[str], timeout_s: float = 120.0) -> None:
    """On a cluster of several nodes, each local folder that workers write and this driver reads must be one
    folder on every node (a shared file system mounted at the same path): Ray Train checks no such thing,
    and what a worker wrote on its own disk would be missing here. This driver writes a file in each
    folder and a task on every node looks for it; a node that cannot see one is an error before training.
    On one node, or with cloud URIs only, there is nothing to check."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    local = sorted({folder for folder in folders if "://" not in folder})
    if len(nodes) < 2 or not local:
        return
    markers = []
    for folder in local:
        Path(folder).mkdir(parents=True, exist_ok=True)
        marker = Path(folder) / f".fmgnn-shared-{uuid.uuid4().hex[:12]}"
        marker.touch()
        markers.append(str(marker))
    try:
        # By node id: nodes on one machine (a test cluster) share an address.
        refs = {node["NodeID"]: missing_files.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(markers)
            for node in nodes}
        missing = {node_id: ray.get(ref, timeout=timeout_s) for node_id, ref in refs.items()}
    finally:
        for marker in markers:
            Path(marker).unlink(missing_ok=True)
    unseen = sorted({str(Path(marker).parent) for found in missing.values() for marker in found})
    if unseen:
        blind = sorted(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in nodes
                       if missing[node["NodeID"]])
        raise InputError(f"storage_path / run_dir: {', '.join(unseen)} is not shared with the cluster's nodes "
                         f"{', '.join(blind)}: on a cluster of {len(nodes)} nodes, run folders and checkpoints go on a "
                         "file system every node mounts at the same path (/mnt/fmgnn in cluster/), and "
                         "storage_path may be s3://... or gs://...")
    log.info("shared folders checked on %d nodes: %s", len(nodes), ", ".join(local))


def make_trainer(tasks: list[TrainTask], name: str, config: RayConfig, storage_path: str,
                 callbacks: list[Any] | None = None) -> TorchTrainer:
    """A TorchTrainer that runs ``tasks`` in order on ``config.num_workers`` workers; ``name`` makes reruns resume.

    The tasks travel pickled: Ray Train's controller unpickles its run's config, and unpickling the tasks
    themselves would import torch_geometric, transformers and scikit-learn into a process that never trains
    (its CPU time per trainer: 8.3 s with them, 5.4-6.3 s without, bench/RESULTS.md)."""
    return TorchTrainer(
        train_worker,
        train_loop_config={"tasks": pickle_tasks(tasks), "precision": config.precision},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker,
                                                           **node_resources(config.node_resource)}),
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
    """Run a trainer's ``fit`` from a task, so that several worker groups train at once."""
    result = trainer.fit()
    return result.metrics, result.checkpoint


def stage_groups(tasks: list[TrainTask], n_groups: int) -> list[list[TrainTask]]:
    """Tasks dealt round-robin into at most ``n_groups`` groups; the same list always gives the same groups."""
    n_groups = max(1, min(n_groups, len(tasks)))
    return [tasks[i::n_groups] for i in range(n_groups)]


def run_stage(tasks: list[TrainTask], stage: str, config: RayConfig, storage_path: str) -> None:
    """Train every task of a stage that is not done yet; each writes its output folder."""
    if all(is_done(t) for t in tasks):
        return
    groups = stage_groups(tasks, config.max_concurrent_runs)
    names = [f"{stage}-{i + 1}of{len(groups)}" for i in range(len(groups))]
    if config.num_workers == 0:  # in this process, on its GPU when ray.use_gpu asks for one
        device = local_device(config.use_gpu)
        for name, group in zip(names, groups):
            run_local(group, Path(storage_path) / name, device, config.precision)
        return
    check_shared_folders([storage_path, *(str(Path(t.output).parent) for t in tasks if t.output is not None)])
    placed = fit_remote.options(resources=node_resources(config.node_resource))
    refs = [placed.remote(make_trainer(group, name, config, storage_path))
            for name, group in zip(names, groups) if not all(is_done(t) for t in group)]
    ray.get(refs)
