"""The one recipe every job runs through: setup, run, save, cleanup (torchtune's recipe shape).

    summary = run_job(BLEGJob(config))

A job (``train baseline``, ``train bleg``, ``tune bleg``, ``augment``, ``pretrain``, ``train fimp``,
``run``) says only what is its own: its folder, the checks of its inputs, which settings may change on a
rerun, and its work. The recipe owns the scaffolding they share, in this order:

1. paths: every path setting of the config is made absolute here, in the driver, before anything reaches
   Ray (``fmgnn.config.resolve_paths``): Ray Train V2 runs each worker in a working directory of its own,
   where a relative path is not the user's. ``runs/main`` and its absolute spelling are one run.
2. the inputs, checked before anything is written, the lock included (``check_inputs``);
3. the run-folder lock (a second job on the folder stops with one line);
4. the rerun rule: a folder that holds an earlier run's ``config.yaml`` is rerun only with the same
   settings, compared key by key over resolved values; a changed key that is not one of the job's
   ``free_settings`` is refused with every changed key named, so finished results made with other settings
   are never reused. Free settings say how the job runs (Ray, tracking, which models to add), not what a
   finished step computed.
5. ``config.yaml`` and ``versions.json``; Ray (started when the job needs it); an MLflow run;
6. the job's own ``run``; then ``manifest.json`` (what made the folder, from what, which settings hash).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from fmgnn.config import load_config, resolve_paths, save_config, to_dict
from fmgnn.engine import local_device
from fmgnn.errors import InputError
from fmgnn.io import atomic_write_json, config_hash, environment_record, run_folder_lock, write_manifest
from fmgnn.tracking import JobRun, TrackingConfig, flatten

if TYPE_CHECKING:
    from pipelines.ray_session import RayConfig


class JobConfig(Protocol):
    """What the recipe reads of every job's config: how Ray runs it and where it is tracked."""

    ray: RayConfig
    tracking: TrackingConfig


C = TypeVar("C", bound=JobConfig)

CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"

# How a job runs, never what it computes: free in every job; below them, the settings that do change results.
RUNTIME_SETTINGS = ("ray", "tracking", "storage_path")
RESULT_SETTINGS = ("ray.precision",)


def is_free(key: str, free: tuple[str, ...]) -> bool:
    """Whether the dotted ``key`` is one of ``free`` or below one, and not a result setting."""
    changes_results = any(key == r or key.endswith(f".{r}") for r in RESULT_SETTINGS)  # a stage's too
    return any(key == f or key.startswith(f"{f}.") for f in free) and not changes_results


class Job(ABC, Generic[C]):
    """One job on one config. Subclasses set ``command`` and ``free_settings`` and implement ``folder``,
    ``run`` and, where they have inputs to check or record, ``check_inputs`` and ``inputs``."""

    command: ClassVar[str]  # as the user types it: "train bleg"; names the job in errors and the manifest
    tracking_name: ClassVar[str]  # the MLflow run's name
    free_settings: ClassVar[tuple[str, ...]] = RUNTIME_SETTINGS  # dotted keys (and everything below them)
    metrics_file: ClassVar[str | None] = "metrics.json"
    config_class: ClassVar[type]

    def __init__(self, config: C) -> None:
        self.config = resolve_paths(config)

    @property
    @abstractmethod
    def folder(self) -> Path:
        """The run folder: locked, and where config.yaml, versions.json and manifest.json go."""

    def check_inputs(self) -> None:
        """Open and check every input; bad input fails here, before anything is written."""

    def uses_ray(self) -> bool:
        """Whether the recipe starts (or joins) Ray before ``run``."""
        return self.config.ray.num_workers > 0

    @abstractmethod
    def run(self, tracking: JobRun) -> dict[str, Any]:
        """The job's work; returns its summary (what ``metrics_file`` holds)."""

    def inputs(self) -> dict[str, Any]:
        """What the job read (other runs and files, by setting name), for the manifest."""
        return {}

    def outputs(self) -> list[str]:
        """What the job wrote, relative to its folder, for the manifest."""
        return [self.metrics_file] if self.metrics_file else []


def changed_settings(saved: dict[str, Any], now: dict[str, Any], free: tuple[str, ...]) -> list[str]:
    """The dotted keys whose values differ between two configs, leaving out ``free`` ones and their children."""
    before, after = flatten(saved), flatten(now)
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k, "<unset>") != after.get(k, "<unset>")]
    return [k for k in changed if not is_free(k, free)]


def settings_hash(config: dict[str, Any], free: tuple[str, ...]) -> str:
    """The hash of the settings that decide a run's results (every key but the free ones)."""
    fixed = {k: v for k, v in flatten(config).items() if not is_free(k, free)}
    return config_hash(fixed)


def check_rerun(job: Job, saved_path: Path) -> None:
    """Refuse to rerun a folder with other result-affecting settings than its earlier run's."""
    if not saved_path.is_file():
        return
    saved = to_dict(load_config(job.config_class, saved_path))
    now = to_dict(job.config)
    changed = changed_settings(saved, now, job.free_settings)
    if not changed:
        return
    before, after = flatten(saved), flatten(now)
    shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    raise InputError(f"{saved_path.parent}: holds a {job.command} run made with other settings: {shown}{more}. "
                     f"Its finished results are not reused for other settings: give another folder, or rerun with "
                     f"the same settings (free to change on a rerun: {', '.join(job.free_settings)})")


def run_job(job: Job) -> dict[str, Any]:
    """Run ``job`` through the recipe (module docstring); returns the job's summary."""
    from pipelines.ray_session import start_ray

    job.check_inputs()
    if job.config.ray.use_gpu and job.config.ray.num_workers == 0:
        local_device(True)  # training in this process on a GPU: one clear error now where there is none
    folder = job.folder
    with run_folder_lock(folder, job.command):
        check_rerun(job, folder / CONFIG_FILE)
        save_config(job.config, folder / CONFIG_FILE)
        atomic_write_json(folder / VERSIONS_FILE, environment_record())
        config = to_dict(job.config)
        # The tracking store before Ray: in a job submitted to a cluster the process's working directory
        # (Ray's unpacked working_dir) was gone once the job had joined the cluster, and MLflow's store
        # reads it when it is opened (tests/test_multinode.py). Opened once, the store is cached.
        with JobRun(job.config.tracking, folder, job.tracking_name, config) as tracking:
            if job.uses_ray():
                start_ray(job.config.ray)
            summary = job.run(tracking)
            write_manifest(folder, job.command, config, job.inputs(), job.outputs(), job.metrics_file,
                           settings=settings_hash(config, job.free_settings))
            tracking.log_artifacts(folder, recursive=False)
        return summary
