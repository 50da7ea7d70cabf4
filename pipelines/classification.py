"""What the classification jobs (``train baseline``, ``train bleg``) share: the logistic-regression
baseline over a run's splits, the per-fold record, the paired comparison, the permutation test and the
printed table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray

from fmgnn.baselines.logistic import LogisticConfig, fc_features, fit_logistic
from fmgnn.cohort import Cohort
from fmgnn.evaluation.metrics import METRIC_NAMES, classification_metrics, mean_std
from fmgnn.config import with_values
from fmgnn.engine import PROGRESS_INTERVAL_S
from fmgnn.evaluation.paired import best_of, compare_to_reference, format_paired, split_ratio
from fmgnn.evaluation.permutation import permutation_p_value, permuted_labels, write_permuted_cohort
from fmgnn.evaluation.splits import Split
from fmgnn.io import atomic_write_json
from pipelines.ray_session import RayConfig, node_resources

log = logging.getLogger("fmgnn.classification")


def fold_result(split: Split, y: np.ndarray, probabilities: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"split": split.name, "seed": split.seed, "fold": split.fold, "n_train": len(split.train),
            "metrics": classification_metrics(y, probabilities), "test_indices": split.test,
            "test_labels": np.asarray(y).tolist(), "test_probabilities": np.asarray(probabilities).tolist(), **extra}


def cohort_features(cohort: Cohort, chunk: int = 256) -> np.ndarray:
    """Every scan's FC upper triangle (N, R (R - 1) / 2), read a chunk of scans at a time: the full (N, R, R)
    matrices of a large cohort would not fit the driver."""
    parts = [fc_features(cohort.fc(np.arange(start, min(start + chunk, len(cohort)))))
             for start in range(0, len(cohort), chunk)]
    return np.concatenate(parts)


def logistic_folds(cohort: Cohort, splits: list[Split], config: LogisticConfig, out_dir: Path) -> list[dict]:
    """The logistic baseline on every split, each fold's record written to ``out_dir``."""
    features, labels = cohort_features(cohort), cohort.labels()
    results = []
    started = last = time.monotonic()
    for k, split in enumerate(splits):
        if time.monotonic() - last >= PROGRESS_INTERVAL_S:  # hundreds of regions: minutes per fold
            last = time.monotonic()
            log.info("logistic: %d of %d splits done (%.0f s)", k, len(splits), last - started)
        model, choice = fit_logistic(features[split.train], labels[split.train],
                                     features[split.val], labels[split.val], config)
        result = fold_result(split, labels[split.test], model.predict_proba(features[split.test]), selection=choice)
        atomic_write_json(out_dir / f"{split.name}.json", result)
        results.append(result)
    return results


@ray.remote
def logistic_task(cohort_path: str, splits: list[Split], config: LogisticConfig, out_dir: str) -> list[dict]:
    return logistic_folds(Cohort(cohort_path), splits, config, Path(out_dir))  # paths resolved by the driver


def run_logistic(cohort: Cohort, splits: list[Split], config: LogisticConfig, out_dir: Path,
                 ray_config: RayConfig) -> list[dict]:
    """The logistic baseline's folds: in this process with ``ray.num_workers=0``, else in one Ray task, because
    its feature matrix (scans x region pairs: 12.8 GB at 40,000 scans of 400 regions) must not sit in the
    driver, which ``ray job submit`` runs on the head node."""
    if ray_config.num_workers == 0:
        return logistic_folds(cohort, splits, config, out_dir)
    task = logistic_task.options(num_cpus=ray_config.cpus_per_worker,
                                 resources=node_resources(ray_config.node_resource))
    return ray.get(task.remote(str(cohort.path.resolve()), splits, config, str(out_dir.resolve())))


# Models without a foundation model or language model: the default reference of the paired comparison.
REFERENCE_CANDIDATES = ("logistic", "gcn", "gcn_alone")
PAIRED_METRICS = ("accuracy", "auc")


def paired_comparison(folds: dict[str, list[dict[str, Any]]], splits: list[Split],
                      reference: str | None = None) -> dict[str, Any] | None:
    """Every model against ``reference`` (default: the best of ``REFERENCE_CANDIDATES`` by mean accuracy),
    split by split (``fmgnn.evaluation.paired``); None with fewer than two models."""
    per_split = {model: {f["split"]: f["metrics"] for f in records} for model, records in folds.items()}
    means = {model: float(np.nanmean([f["metrics"]["accuracy"] for f in records])) for model, records in folds.items()}
    reference = reference or best_of(means, REFERENCE_CANDIDATES)
    if reference is None or len(per_split) < 2:
        return None
    ratio = split_ratio([len(s.test) for s in splits], [len(s.train) + len(s.val) for s in splits])
    return compare_to_reference(per_split, reference, PAIRED_METRICS, ratio)


PERMUTATION_SEED = 10_000  # permutation k shuffles with seed PERMUTATION_SEED + k
Config = TypeVar("Config")


def run_permutations(config: Config, run: Callable[[Config], dict[str, Any]], cohort: Cohort, run_dir: Path,
                     summary: dict[str, Any], n: int, tracking: Any) -> dict[str, Any]:
    """The whole job again on ``n`` copies of the cohort with labels shuffled among subjects
    (``fmgnn.evaluation.permutation``); each model's permutation p-value of its mean test accuracy.

    Copy k and its run live in ``run_dir/permutations/perm<k>/``, so an interrupted test resumes
    where it stopped, as any run does.
    """
    real = {model: m["summary"]["accuracy"]["mean"] for model, m in summary["models"].items()}
    scores: dict[str, list[float]] = {model: [] for model in real}
    for k in range(n):
        folder = run_dir / "permutations" / f"perm{k:03d}"
        path = folder / "cohort.parquet"
        if not path.is_file():
            labels = permuted_labels(cohort.labels(), cohort.subject_ids(), PERMUTATION_SEED + k)
            write_permuted_cohort(cohort, labels, path)
        log.info("permutation %d/%d (labels shuffled among subjects): %s", k + 1, n, folder)
        permuted = with_values(config, {"cohort": str(path), "run_dir": str(folder / "run"), "permutations": 0})
        permuted.tracking = tracking
        result = run(permuted)
        for model in real:
            scores[model].append(result["models"][model]["summary"]["accuracy"]["mean"])
    return {"n": n, "metric": "accuracy", "shuffled": "labels among subjects, whole pipeline rerun",
            "models": {model: {"score": real[model], "permuted": scores[model],
                               "permuted_mean": float(np.mean(scores[model])),
                               "p_value": permutation_p_value(real[model], scores[model])} for model in real}}


def format_permutations(permutations: dict[str, Any]) -> list[str]:
    return [f"permutation test ({permutations['n']} shuffles of the labels among subjects, whole pipeline):"] + [
        f"  {model}: accuracy {m['score']:.3f}, shuffled {m['permuted_mean']:.3f}, p = {m['p_value']:.3g}"
        for model, m in permutations["models"].items()]


def format_table(summaries: dict[str, dict[str, dict[str, float]]], paired: dict[str, Any] | None = None,
                 permutations: dict[str, Any] | None = None, chance: dict[str, Any] | None = None) -> str:
    header = f"{'model':<10}" + "".join(f"{m:>22}" for m in METRIC_NAMES)
    lines = [header]
    for model, summary in summaries.items():
        lines.append(f"{model:<10}" + "".join(f"{mean_std(summary[m]):>22}" for m in METRIC_NAMES))
    if chance:
        sizes = chance["test_sizes"]
        lines.append(f"majority class (the training part's, always): accuracy {chance['majority_accuracy']:.3f}; "
                     f"{len(sizes)} splits of {min(sizes)}-{max(sizes)} test scans")
    if paired:
        lines += ["paired, split by split:", *format_paired(paired, PAIRED_METRICS)]
    if permutations:
        lines += format_permutations(permutations)
    return "\n".join(lines)
