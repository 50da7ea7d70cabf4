"""``fmgnn train baseline``: logistic regression and a Ray Train GCN on identical folds.

    python -m pipelines.train baseline --config configs/baseline.yaml cohort=cohorts/nmda.parquet
    ray job submit --working-dir . -- python -m pipelines.train baseline cohort=/shared/nmda.parquet

The run directory receives ``config.yaml`` (resolved), ``versions.json``, ``splits.json``,
per-fold results under ``<model>/`` and ``metrics.json`` (mean and std over folds and seeds).
A rerun with the same ``run_dir`` skips finished folds and resumes unfinished GCN folds from
their latest per-epoch checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmgnn.baselines.gcn import GCNConfig
from fmgnn.baselines.logistic import LogisticConfig
from fmgnn.baselines.train_gcn import GCNTask
from fmgnn.cohort import Cohort
from fmgnn.config import LocalPath, OptionalLocalPath
from fmgnn.engine import is_done, read_result
from fmgnn.errors import InputError
from fmgnn.evaluation.metrics import majority_rate, mean_std, summarize
from fmgnn.evaluation.splits import FoldConfig, Split, cohort_splits, save_splits
from fmgnn.graphs import GraphConfig
from fmgnn.io import atomic_write_json
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.classification import fold_result, format_table, paired_comparison, run_logistic, run_permutations
from pipelines.command import Entry, job_main
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig
from pipelines.trainers import resolve_storage_path, run_stage

log = logging.getLogger("fmgnn.train")

MODELS = ("logistic", "gcn")


@dataclass
class BaselineJobConfig:
    """Args:
        cohort: Cohort Parquet file (from ``fmgnn ingest``).
        run_dir: Output directory of this run.
        models: Baselines to run, out of ``logistic`` and ``gcn``.
        storage_path: Where Ray Train keeps checkpoints (local path or s3://, gs://);
            None: ``<run_dir>/ray_results``.
        reference: The model the other is compared with split by split (``metrics.json``'s ``paired``);
            None: the better one by mean accuracy.
        permutations: Rerun the job this many times with labels shuffled among subjects and report each
            model's permutation p-value (``metrics.json``'s ``permutation``); 0: no permutation test.
    """

    cohort: LocalPath = ""
    run_dir: LocalPath = "runs/baseline"
    models: list[str] = field(default_factory=lambda: list(MODELS))
    storage_path: OptionalLocalPath = None
    graph: GraphConfig = field(default_factory=GraphConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    logistic: LogisticConfig = field(default_factory=LogisticConfig)
    gcn: GCNConfig = field(default_factory=GCNConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    reference: str | None = None
    permutations: int = 0

    def __post_init__(self) -> None:
        if self.permutations < 0:
            raise InputError(f"permutations must be >= 0, received {self.permutations}")
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise InputError(f"models: unknown {unknown}; choose from {list(MODELS)}")
        if self.reference is not None and self.reference not in self.models:
            raise InputError(f"reference: {self.reference!r} is not one of the models {self.models}")


def run_gcn(cohort: Cohort, splits: list[Split], config: BaselineJobConfig, out_dir: Path,
            tracking: JobRun) -> list[dict]:
    """The GCN on every split: one stage of tasks (``pipelines.trainers.run_stage``); per-fold JSON from
    each task's output folder."""
    storage_path = resolve_storage_path(config.storage_path, config.run_dir)
    cohort_path = str(cohort.path.resolve())
    tasks = [GCNTask(f"gcn-{s.name}", cohort_path, s, config.graph, config.gcn, seed=s.seed * 1000 + s.fold,
                     output=out_dir / "folds" / s.name) for s in splits]
    done = sum(is_done(t) for t in tasks)
    if done:
        log.info("gcn: %d of %d folds already done in %s, skipping them", done, len(splits), out_dir)
    run_stage(tasks, "gcn", config.ray, storage_path)
    tracking.log_tasks(tasks)
    results = []
    for split, task in zip(splits, tasks):
        out = out_dir / f"{split.name}.json"
        if out.is_file():  # recorded by an earlier run
            results.append(json.loads(out.read_text()))
            continue
        metrics = read_result(task.output)
        result = fold_result(split, np.array(metrics["test_labels"]), np.array(metrics["test_probabilities"]),
                             best_epoch=metrics["best_epoch"], epochs_run=metrics["epoch"] + 1,
                             history=metrics["history"], resumed_at=metrics["resumed_at"],
                             world_size=metrics.get("world_size", 1), peak_rss_mb=metrics.get("peak_rss_mb"))
        atomic_write_json(out, result)
        results.append(result)
    log.info("gcn: %d folds done", len(results))
    return results


class BaselineJob(Job[BaselineJobConfig]):
    """``fmgnn train baseline`` through the job recipe (``pipelines.job``)."""

    command, tracking_name, config_class = "train baseline", "baseline", BaselineJobConfig
    # Which models run and how they are compared add to a run; they do not change a finished fold.
    free_settings = (*RUNTIME_SETTINGS, "run_dir", "models", "reference", "permutations")

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir)

    def check_inputs(self) -> None:
        if not self.config.cohort:
            raise InputError("cohort: give the cohort Parquet file (cohort=path/to/cohort.parquet)")
        self.cohort = Cohort(self.config.cohort)

    def inputs(self) -> dict[str, Any]:
        return {"cohort": self.config.cohort}

    def outputs(self) -> list[str]:
        return ["metrics.json", "splits.json", "config.yaml", *self.config.models]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, cohort, run_dir = self.config, self.cohort, self.folder
        splits = cohort_splits(cohort, config.folds)
        save_splits(splits, cohort, run_dir / "splits.json")
        log.info("cohort %s: %d scans, %d splits (%s)", cohort.metadata.name, len(cohort), len(splits),
                 "one per site" if config.folds.strategy == "leave_site_out"
                 else f"{config.folds.n_folds} folds x {len(config.folds.seeds)} seeds")
        results: dict[str, Any] = {"cohort": cohort.summary(), "chance": majority_rate(cohort.labels(), splits),
                                   "models": {}}
        folds: dict[str, list[dict[str, Any]]] = {}
        for model in config.models:
            out_dir = run_dir / model
            out_dir.mkdir(exist_ok=True)
            start = time.monotonic()
            if model == "logistic":
                per_fold = run_logistic(cohort, splits, config.logistic, out_dir, config.ray)
            else:
                per_fold = run_gcn(cohort, splits, config, out_dir, tracking)
            folds[model] = per_fold
            results["models"][model] = {
                "summary": summarize([r["metrics"] for r in per_fold]),
                "wall_time_s": round(time.monotonic() - start, 1),
            }
            log.info("%s: accuracy %s over %d folds (%.0f s)", model,
                     mean_std(results["models"][model]["summary"]["accuracy"]), len(per_fold),
                     results["models"][model]["wall_time_s"])
        results["paired"] = paired_comparison(folds, splits, config.reference)
        if config.permutations:
            results["permutation"] = run_permutations(config, run_baselines, cohort, run_dir, results,
                                                      config.permutations, tracking.for_child())
        atomic_write_json(run_dir / "metrics.json", results)
        tracking.log_metrics({m: r["summary"] for m, r in results["models"].items()})
        print(format_table({m: r["summary"] for m, r in results["models"].items()}, results["paired"],
                           results.get("permutation"), results["chance"]))
        return results


def run_baselines(config: BaselineJobConfig) -> dict[str, Any]:
    """Run every configured baseline on the same folds; returns ``metrics.json``'s content."""
    return run_job(BaselineJob(config))


def bleg_job() -> Entry:
    from pipelines.bleg import BLEGJobConfig, run_bleg

    return BLEGJobConfig, run_bleg


def fimp_job() -> Entry:
    from pipelines.fimp import FIMPJobConfig, run_fimp

    return FIMPJobConfig, run_fimp


def main(argv: list[str] | None = None) -> int:
    return job_main("train", __doc__, argv, kinds={"baseline": lambda: (BaselineJobConfig, run_baselines),
                                                    "bleg": bleg_job, "fimp": fimp_job})


if __name__ == "__main__":
    raise SystemExit(main())
