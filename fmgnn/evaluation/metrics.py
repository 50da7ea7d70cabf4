"""Classification metrics from predicted probabilities, and their mean and std over folds.

For two classes, class 1 is the positive class: sensitivity is its recall and specificity the
recall of class 0. For more classes, sensitivity and specificity are macro averages of the
one-vs-rest values, F1 is macro, and AUC is one-vs-rest macro. AUC always comes from
probabilities, never from hard predictions.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

METRIC_NAMES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "auc")


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Metrics of one fold. ``probabilities`` is ``(N, C)`` with rows summing to 1."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != y_true.shape[0]:
        raise ValueError(f"probabilities must be (N={y_true.shape[0]}, C), received {probabilities.shape}")
    n_classes = probabilities.shape[1]
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    recall = np.divide(np.diag(cm), cm.sum(axis=1), out=np.full(n_classes, np.nan), where=cm.sum(axis=1) > 0)
    negatives = cm.sum() - cm.sum(axis=1)
    true_negatives = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    specificity_ovr = np.divide(true_negatives, negatives, out=np.full(n_classes, np.nan), where=negatives > 0)
    if n_classes == 2:
        sensitivity, specificity = recall[1], recall[0]
        f1 = f1_score(y_true, y_pred, pos_label=1, zero_division=0)
        auc = roc_auc_score(y_true, probabilities[:, 1]) if len(np.unique(y_true)) == 2 else np.nan
    else:
        sensitivity, specificity = np.nanmean(recall), np.nanmean(specificity_ovr)
        f1 = f1_score(y_true, y_pred, average="macro", labels=np.arange(n_classes), zero_division=0)
        present = np.unique(y_true)
        auc = (roc_auc_score(y_true, probabilities, multi_class="ovr", labels=np.arange(n_classes))
               if len(present) == n_classes else np.nan)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "f1": float(f1),
        "auc": float(auc),
    }


def summarize(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean": .., "std": .., "n": ..}}`` over folds (and seeds); std is the sample std, None
    with fewer than two values (one run has no spread, and 0 would read as one)."""
    summary = {}
    for name in METRIC_NAMES:
        values = np.array([m[name] for m in per_fold if name in m], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(values.mean()) if values.size else float("nan"),
            "std": float(values.std(ddof=1)) if values.size > 1 else None,
            "n": int(values.size),
        }
    return summary


def mean_std(value: dict[str, float | None], digits: int = 3) -> str:
    """``0.750 ± 0.012``, or ``0.750 (1 run)`` when there is no spread to show."""
    if value.get("std") is None:
        return f"{value['mean']:.{digits}f} (1 run)"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def majority_rate(labels: np.ndarray, splits: list) -> dict[str, float | list[int]]:
    """What always answering the training part's majority class scores on each test part (the chance
    line of a table), and the test parts' sizes."""
    labels = np.asarray(labels)
    rates, sizes = [], []
    for split in splits:
        seen = labels[[*split.train, *split.val]]
        majority = np.bincount(seen).argmax()
        rates.append(float((labels[split.test] == majority).mean()))
        sizes.append(len(split.test))
    return {"majority_accuracy": float(np.mean(rates)), "test_sizes": sizes}
