"""Experiment tracking: every job's run in MLflow, with its config, per-epoch metrics and artifacts.

A job opens one MLflow run (its resolved config as parameters, its versions record as a tag file);
each trained task of it (a fold's GCN, a fold's stage 2, a FIMP model of a seed...) becomes a nested
run with the task's per-epoch history as metric curves, its final metrics and its small output files.
Logging happens in the driver after a stage, from the tasks' result records: workers on a cluster
need no access to the tracking store, and a resumed run logs what it finished exactly once per job run.
Sweeps log their trials through Ray Tune's own ``MLflowLoggerCallback``.

The store is ``tracking.uri``: a tracking server (``http://host:5000``), a database, or by default an
embedded SQLite file ``mlflow.db`` beside the run folder (``runs/mlflow.db`` for ``runs/<job>``), which
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Small records, plots and the report are logged; weights stay in the run folder.
ARTIFACT_SUFFIXES = {".json", ".yaml", ".png", ".csv", ".html"}
ARTIFACT_MAX_BYTES = 5_000_000


@dataclass
class TrackingConfig:
    """Args:
        enabled: Log the run to MLflow.
        uri: Tracking URI (a server, ``sqlite:///path/mlflow.db``...); empty: ``sqlite:///`` +
            the run folder's parent + ``/mlflow.db``.
        experiment: MLflow experiment of the run.
        parent_run_id: Nest this job's run under that run (the main job passes its own to its stages).
    """

    enabled: bool = True
    uri: str = ""
    experiment: str = "fmgnn"
    parent_run_id: str | None = None

    def resolved_uri(self, run_dir: str | Path) -> str:
        if self.uri:
            return self.uri
        return f"sqlite:///{(Path(run_dir).resolve().parent / 'mlflow.db')}"


def store_lock(uri: str) -> contextlib.AbstractContextManager:
    """Holds off other jobs on this machine while an embedded SQLite store is created or migrated.

    MLflow creates and migrates a new SQLite file on its first query without a lock: two jobs started
    at once on one store race on its schema (alembic: "expected to match one row ... 0 found"). Their
    first query and the experiment's creation run under one file lock beside the database; a server
    or another database does its own locking.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock", timeout=600)


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys."""
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


class JobRun:
    """One job's MLflow run; a no-op when tracking is off."""

    def __init__(self, config: TrackingConfig, run_dir: str | Path, job: str, params: dict[str, Any]) -> None:
        self.enabled, self.experiment = config.enabled, config.experiment
        self.run_id: str | None = None
        if not self.enabled:
            return
        import mlflow

        self.uri = config.resolved_uri(run_dir)
        # Artifacts of an embedded store go beside it (MLflow's default is ./mlruns under the working directory).
        artifacts = None if config.uri else (Path(run_dir).resolve().parent / "mlartifacts").as_uri()
        with store_lock(self.uri):
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(config.experiment)
            self.experiment_id = experiment.experiment_id if experiment else \
                self.client.create_experiment(config.experiment, artifact_location=artifacts)
        tags = {"fmgnn.job": job, "fmgnn.run_dir": str(Path(run_dir).resolve())}
        if config.parent_run_id:
            tags["mlflow.parentRunId"] = config.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{job}:{Path(run_dir).name}", tags=tags)
        self.run_id = run.info.run_id
        self.log_params(self.run_id, params)
        log.info("tracking %s in MLflow run %s (%s)", job, self.run_id, self.uri)

    def for_child(self) -> TrackingConfig:
        """The tracking settings of a job this one starts: the same store, nested under this run."""
        return TrackingConfig(enabled=self.enabled, uri=self.uri if self.enabled else "",
                              experiment=self.experiment, parent_run_id=self.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(run_id, params=flat[start:start + 100])

    def log_metrics(self, metrics: dict[str, Any], run_id: str | None = None, step: int = 0) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        values = [Metric(k, float(v), 0, step) for k, v in flatten(metrics).items() if is_number(v)]
        for start in range(0, len(values), 1000):
            self.client.log_batch(run_id or self.run_id, metrics=values[start:start + 1000])

    def log_task(self, name: str, result: dict[str, Any], output: Path | None = None,
                 params: dict[str, Any] | None = None) -> None:
        """A nested run of one trained task: its epoch curves, final metrics and small output files."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        child = self.client.create_run(self.experiment_id, run_name=name,
                                       tags={"mlflow.parentRunId": self.run_id}).info.run_id
        if params:
            self.log_params(child, params)
        curves = [Metric(k, float(v), 0, int(record["epoch"])) for record in result.get("history", [])
                  for k, v in record.items() if k != "epoch" and is_number(v)]
        for start in range(0, len(curves), 1000):
            self.client.log_batch(child, metrics=curves[start:start + 1000])
        per_epoch = {k for record in result.get("history", []) for k in record}  # logged as curves above
        self.log_metrics({k: v for k, v in result.items() if k != "history" and k not in per_epoch}, run_id=child)
        if output is not None:
            self.log_artifacts(output, run_id=child)
        self.client.set_terminated(child)

    def log_tasks(self, tasks: list[Any]) -> None:
        """Every finished task of a stage (``fmgnn.engine`` tasks with an output folder), each a nested run."""
        from fmgnn.engine import is_done, read_result

        for task in tasks:
            if is_done(task):
                self.log_task(task.name, read_result(task.output), task.output)

    def log_artifacts(self, folder: str | Path, run_id: str | None = None, recursive: bool = True) -> None:
        """The folder's small records and plots (weights stay where the job wrote them); without
        ``recursive``, its own files and its ``plots/``."""
        if not self.enabled:
            return
        folder = Path(folder)
        paths = folder.rglob("*") if recursive else [*folder.glob("*"), *folder.glob("plots/*")]
        for path in sorted(paths):
            relative = path.relative_to(folder).parent
            hidden = any(part.startswith(".") or part == "ray_results" for part in relative.parts)
            if path.is_file() and not hidden and path.suffix in ARTIFACT_SUFFIXES \
                    and path.stat().st_size <= ARTIFACT_MAX_BYTES:
                self.client.log_artifact(run_id or self.run_id, str(path),
                                         None if str(relative) == "." else str(relative))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> JobRun:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self.finish("FINISHED" if kind is None else "FAILED")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
