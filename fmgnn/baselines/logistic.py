"""Logistic regression on the standardised FC upper triangle.

The regularisation strength C is chosen on the validation split (best validation AUC, ties to
the smaller C), then the model is refitted on train + validation with that C. The scaler is
fitted inside the pipeline, on training subjects only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class LogisticConfig:
    """Args:
        c_grid: Inverse regularisation strengths to choose from on the validation split.
        max_iter: Solver iterations.
    """

    c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    max_iter: int = 5000


def fc_features(fc: np.ndarray) -> np.ndarray:
    """``(N, R, R)`` FC -> ``(N, R (R - 1) / 2)`` upper triangles."""
    rows, cols = np.triu_indices(fc.shape[-1], 1)
    return fc[:, rows, cols]


def _model(c: float, config: LogisticConfig) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=config.max_iter))


def _validation_score(model: Pipeline, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = model.predict_proba(x)
    if len(np.unique(y)) < 2:
        return float((probabilities.argmax(1) == y).mean())
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(y, probabilities[:, 1]))
    return float(roc_auc_score(y, probabilities, multi_class="ovr"))


def fit_logistic(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 config: LogisticConfig) -> tuple[Pipeline, dict[str, float]]:
    """Choose C on validation, refit on train + validation; returns the model and the choice."""
    scores = {c: _validation_score(_model(c, config).fit(x_train, y_train), x_val, y_val) for c in config.c_grid}
    best_c = max(sorted(scores), key=lambda c: scores[c])  # sorted ascending: ties go to the smaller C
    model = _model(best_c, config).fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
    return model, {"C": best_c, "val_auc": scores[best_c]}
