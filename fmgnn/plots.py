"""Figures of a classification run: ROC curves, learning curves, confusion matrices.

Each function takes per-fold results as the jobs write them (``test_labels``,
``test_probabilities``, ``history``) keyed by model name, and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402

FoldResults = dict[str, list[dict[str, Any]]]


def pooled_predictions(folds: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Test labels and class probabilities of every fold, concatenated."""
    y = np.concatenate([f["test_labels"] for f in folds])
    p = np.concatenate([np.asarray(f["test_probabilities"]) for f in folds])
    return y, p


def mean_curves(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list[float]]:
    """Mean over runs of each history key per epoch (runs that stopped early drop out of later epochs)."""
    histories = [r["history"] for r in runs if r.get("history")]
    longest = max((len(h) for h in histories), default=0)
    curves: dict[str, list[float]] = {"epoch": list(range(longest))}
    for key in keys:
        curves[key] = [float(np.mean([h[e][key] for h in histories if len(h) > e and key in h[e]]))
                       for e in range(longest)]
    return curves


def plot_roc(results: FoldResults, path: Path) -> None:
    """ROC of the test predictions pooled over folds (binary tasks: class 1 against the rest)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for model, folds in results.items():
        y, p = pooled_predictions(folds)
        if p.shape[1] != 2 or len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p[:, 1])
        aucs = [f["metrics"]["auc"] for f in folds]
        ax.plot(fpr, tpr, label=f"{model} (AUC {np.nanmean(aucs):.3f} ± {np.nanstd(aucs, ddof=1):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="test ROC, folds pooled")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(results: FoldResults, path: Path, keys: tuple[str, ...] = ("train_loss", "val_loss")) -> None:
    """Mean over folds of each loss per epoch (folds that stopped early drop out of later epochs)."""
    models = [m for m, folds in results.items() if any(f.get("history") for f in folds)]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        curves = mean_curves(results[model], keys)
        for key in keys:
            ax.plot(curves["epoch"], curves[key], label=key)
        ax.set(title=model, xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(results: FoldResults, label_names: list[str], path: Path) -> None:
    """Confusion matrices of the arg-max test predictions, summed over folds."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.4), squeeze=False)
    for ax, (model, folds) in zip(axes[0], results.items()):
        y, p = pooled_predictions(folds)
        matrix = confusion_matrix(y, p.argmax(1), labels=range(len(label_names)))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center")
        ax.set(title=model, xlabel="predicted", ylabel="true", xticks=range(len(label_names)),
               yticks=range(len(label_names)), xticklabels=label_names, yticklabels=label_names)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
