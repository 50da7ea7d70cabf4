"""``fmgnn train baseline``: logistic regression and a Ray Train GCN on identical folds.

    python -m pipelines.train baseline --config configs/baseline.yaml cohort=cohorts/nmda.parquet
    ray job submit --working-dir . -- python -m pipelines.train baseline cohort=/shared/nmda.parquet

The run directory receives ``config.yaml`` (resolved), ``versions.json``, ``splits.json``,
per-fold results under ``<model>/`` and ``metrics.json`` (mean and std over folds and seeds).
A rerun with the same ``run_dir`` skips finished folds and resumes unfinished GCN folds from
their latest per-epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from fmgnn.baselines.gcn import GCNConfig
from fmgnn.baselines.logistic import LogisticConfig, fc_features, fit_logistic
from fmgnn.baselines.train_gcn import GCNTrainSpec, train_loop
from fmgnn.cohort import Cohort
from fmgnn.config import load_config, save_config
from fmgnn.evaluation.metrics import METRIC_NAMES, classification_metrics, summarize
from fmgnn.evaluation.splits import FoldConfig, Split, make_splits, save_splits
from fmgnn.graphs import GraphConfig
from fmgnn.io import atomic_write_json, environment_record
from pipelines.errors import exit_on_input_error
from pipelines.ray_session import RayConfig, start_ray

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
    """

    cohort: str = ""
    run_dir: str = "runs/baseline"
    models: list[str] = field(default_factory=lambda: list(MODELS))
    storage_path: str | None = None
    graph: GraphConfig = field(default_factory=GraphConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    logistic: LogisticConfig = field(default_factory=LogisticConfig)
    gcn: GCNConfig = field(default_factory=GCNConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise ValueError(f"models: unknown {unknown}; choose from {list(MODELS)}")


def fold_result(split: Split, y: np.ndarray, probabilities: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"split": split.name, "seed": split.seed, "fold": split.fold,
            "metrics": classification_metrics(y, probabilities), "test_indices": split.test,
            "test_labels": np.asarray(y).tolist(), "test_probabilities": np.asarray(probabilities).tolist(), **extra}


def run_logistic(cohort: Cohort, splits: list[Split], config: LogisticConfig, out_dir: Path) -> list[dict]:
    features, labels = fc_features(cohort.fc()), cohort.labels()
    results = []
    for split in splits:
        model, choice = fit_logistic(features[split.train], labels[split.train],
                                     features[split.val], labels[split.val], config)
        result = fold_result(split, labels[split.test], model.predict_proba(features[split.test]), selection=choice)
        atomic_write_json(out_dir / f"{split.name}.json", result)
        results.append(result)
    return results


@ray.remote(num_cpus=0)
def _fit_remote(trainer: TorchTrainer) -> dict[str, Any]:
    """Run a trainer's ``fit`` from a task, so that several folds train at once."""
    return trainer.fit().metrics


def gcn_trainer(cohort_path: str, split: Split, config: BaselineJobConfig, storage_path: str) -> TorchTrainer:
    spec = GCNTrainSpec(cohort_path=cohort_path, split=split, graph=config.graph, model=config.gcn,
                        seed=split.seed * 1000 + split.fold)
    resources = {"CPU": config.ray.cpus_per_worker}
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"gcn-{split.name}", storage_path=storage_path,
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=config.ray.train_log_level),
        ),
    )


def resolve_storage_path(config: BaselineJobConfig) -> str:
    """Cloud URIs as given; local paths made absolute, since Ray Train workers run elsewhere."""
    if config.storage_path and "://" in config.storage_path:
        return config.storage_path
    return str(Path(config.storage_path or Path(config.run_dir) / "ray_results").resolve())


def run_gcn(cohort: Cohort, splits: list[Split], config: BaselineJobConfig, out_dir: Path) -> list[dict]:
    storage_path = resolve_storage_path(config)
    cohort_path = str(cohort.path.resolve())
    todo = [s for s in splits if not (out_dir / f"{s.name}.json").is_file()]
    if len(todo) < len(splits):
        log.info("gcn: %d of %d folds already done in %s, skipping them", len(splits) - len(todo), len(splits), out_dir)

    def finish(split: Split, metrics: dict[str, Any], done: int) -> None:
        result = fold_result(split, np.array(metrics["test_labels"]), np.array(metrics["test_probabilities"]),
                             best_epoch=metrics["best_epoch"], epochs_run=metrics["epoch"] + 1)
        atomic_write_json(out_dir / f"{split.name}.json", result)
        log.info("gcn: fold %s done (%d/%d), test accuracy %.3f, AUC %.3f", split.name, done, len(splits),
                 result["metrics"]["accuracy"], result["metrics"]["auc"])

    done = len(splits) - len(todo)
    if config.ray.num_workers == 0:  # in-process: Ray Train's local mode, one fold after another
        for split in todo:
            done += 1
            finish(split, gcn_trainer(cohort_path, split, config, storage_path).fit().metrics, done)
    else:
        pending: dict[ray.ObjectRef, Split] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < config.ray.max_concurrent_runs:
                split = queue.pop(0)
                pending[_fit_remote.remote(gcn_trainer(cohort_path, split, config, storage_path))] = split
            ready, _ = ray.wait(list(pending), num_returns=1)
            split = pending.pop(ready[0])
            done += 1
            finish(split, ray.get(ready[0]), done)
    return [json.loads((out_dir / f"{s.name}.json").read_text()) for s in splits]


def format_table(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    header = f"{'model':<10}" + "".join(f"{m:>22}" for m in METRIC_NAMES)
    lines = [header]
    for model, summary in summaries.items():
        lines.append(f"{model:<10}" + "".join(
            f"{summary[m]['mean']:>14.3f} ± {summary[m]['std']:<5.3f}" for m in METRIC_NAMES))
    return "\n".join(lines)


def run_baselines(config: BaselineJobConfig) -> dict[str, Any]:
    """Run every configured baseline on the same folds; returns ``metrics.json``'s content."""
    if not config.cohort:
        raise ValueError("cohort: give the cohort Parquet file (cohort=path/to/cohort.parquet)")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    atomic_write_json(run_dir / "versions.json", environment_record())

    cohort = Cohort(config.cohort)
    splits = make_splits(cohort.labels(), config.folds, cohort.metadata.label_names)
    save_splits(splits, cohort.subject_ids(), run_dir / "splits.json")
    log.info("cohort %s: %d subjects, %d splits (%d folds x %d seeds)", cohort.metadata.name, len(cohort),
             len(splits), config.folds.n_folds, len(config.folds.seeds))

    results: dict[str, Any] = {"cohort": cohort.summary(), "models": {}}
    for model in config.models:
        out_dir = run_dir / model
        out_dir.mkdir(exist_ok=True)
        start = time.monotonic()
        if model == "logistic":
            per_fold = run_logistic(cohort, splits, config.logistic, out_dir)
        else:
            start_ray(config.ray)
            per_fold = run_gcn(cohort, splits, config, out_dir)
        results["models"][model] = {
            "summary": summarize([r["metrics"] for r in per_fold]),
            "wall_time_s": round(time.monotonic() - start, 1),
        }
        log.info("%s: accuracy %.3f ± %.3f over %d folds (%.0f s)", model,
                 results["models"][model]["summary"]["accuracy"]["mean"],
                 results["models"][model]["summary"]["accuracy"]["std"], len(per_fold),
                 results["models"][model]["wall_time_s"])
    atomic_write_json(run_dir / "metrics.json", results)
    print(format_table({m: r["summary"] for m, r in results["models"].items()}))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmgnn train", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["baseline"], help="what to train")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. gcn.hidden=32")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return exit_on_input_error(
        "train", lambda: run_baselines(load_config(BaselineJobConfig, args.config, args.overrides)))


if __name__ == "__main__":
    raise SystemExit(main())
