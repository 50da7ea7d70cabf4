"""Every PNG figure the jobs write: a classification run's ROC curves, learning curves and confusion
matrices (from per-fold results as the jobs write them: ``test_labels``, ``test_probabilities``,
``history``, keyed by model name), FIMP's reconstruction examples, a sweep's trial curves and parameter
importance. The HTML report's figures are drawn by ``fmgnn.report_html``.
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


def plot_reconstruction_examples(examples: dict[str, dict[str, np.ndarray]], images: bool, xlabel: str,
                                 path: Path) -> None:
    """One row per model of a test item (``target``, ``predicted``, ``mask`` of its tokens): images as
    true / input / predicted pictures (``grid`` and ``patch`` give the layout), else the series with its
    hidden tokens shaded."""
    names = list(examples)
    if images:
        fig, axes = plt.subplots(len(examples), 3, figsize=(4.5, 1.6 * len(examples)), squeeze=False)
        for row, (name, example) in zip(axes, examples.items()):
            grid, patch = int(example["grid"]), int(example["patch"])
            hidden = example["mask"][:, None].repeat(patch * patch, axis=1)
            shown = np.where(hidden, 0.5, example["target"])
            filled = np.where(hidden, example["predicted"], example["target"])
            for ax, tokens, title in zip(row, (example["target"], shown, filled), ("true", "input", "predicted")):
                ax.imshow(tokens_to_image(tokens, grid, patch), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(title if name == names[0] else "", fontsize=8)
            row[0].set_ylabel(name, rotation=0, ha="right")
    else:
        fig, axes = plt.subplots(len(examples), 1, figsize=(9, 1.6 * len(examples)), squeeze=False)
        for ax, (name, example) in zip(axes[:, 0], examples.items()):
            f, w = example["target"].shape
            t = np.arange(f * w)
            ax.plot(t, example["target"].reshape(-1), "k", lw=1, label="true")
            ax.plot(t, example["predicted"].reshape(-1), "C1", lw=1, label="predicted")
            for window in np.flatnonzero(example["mask"]):
                ax.axvspan(window * w, (window + 1) * w, color="0.85", zorder=0)
            ax.set_ylabel(name, rotation=0, ha="right")
        axes[0, 0].legend(loc="upper right", fontsize=7)
        axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trial_curves(curves: list[tuple[list[float], list[float]]], path: Path) -> None:
    """Validation loss per epoch of every sweep trial (ASHA's early stops show as short lines)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for epochs, losses in curves:
        ax.plot(epochs, losses, lw=1)
    ax.set(xlabel="epoch", ylabel="mean validation CE over folds", title="trials (ASHA stops the poor ones)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_importance(importance: dict[str, float], path: Path) -> None:
    """Parameter importance as horizontal bars."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importance)))
    ax.barh(list(importance), list(importance.values()))
    ax.set(xlabel="importance (fANOVA on best validation loss)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tokens_to_image(tokens: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """(grid^2, patch^2) raster-order patches -> (grid * patch, grid * patch) image."""
    return tokens.reshape(grid, grid, patch, patch).transpose(0, 2, 1, 3).reshape(grid * patch, grid * patch)
