"""Stratified k-fold x seeds, with the validation split carved out of each training part.

Every model of a run is evaluated on the same :class:`Split` objects (saved as ``splits.json``),
so baselines and methods are compared fold by fold. The test fold is never used for fitting
or for model selection; only the validation subjects are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from fmgnn.errors import InputError
from fmgnn.io import atomic_write_json


@dataclass
class FoldConfig:
    """Args:
        n_folds: Outer stratified folds k.
        seeds: One repetition of the k folds per seed.
        val_fraction: Share of each training part held out for validation (stratified).
    """

    n_folds: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    val_fraction: float = 0.15

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError("folds.seeds must name at least one seed")
        if self.n_folds < 2:
            raise InputError(f"folds.n_folds must be >= 2, received {self.n_folds}")
        if not 0.0 < self.val_fraction < 0.5:
            raise InputError(f"folds.val_fraction must be in (0, 0.5), received {self.val_fraction}")


@dataclass
class Split:
    """Indices (into the cohort's rows) of one seed x fold."""

    seed: int
    fold: int
    train: list[int]
    val: list[int]
    test: list[int]

    @property
    def name(self) -> str:
        return f"seed{self.seed}_fold{self.fold}"


class SplitError(InputError):
    """Labels that cannot be split as asked."""


def check_labels(labels: np.ndarray, n_folds: int, label_names: list[str] | None = None) -> None:
    """Fail early, naming the class, when stratified k-fold cannot work on these labels."""
    classes, counts = np.unique(labels, return_counts=True)
    name = (lambda k: f"{k} ({label_names[k]})") if label_names else str
    if len(classes) < 2:
        only = name(int(classes[0])) if len(classes) else "none"
        raise SplitError(f"the cohort has one class only (label {only}); classification needs at least two")
    small = [(name(int(c)), int(n)) for c, n in zip(classes, counts) if n < n_folds]
    if small:
        raise SplitError(
            f"stratified {n_folds}-fold needs at least {n_folds} subjects per class; "
            + ", ".join(f"label {c} has {n}" for c, n in small)
        )


def make_splits(labels: np.ndarray, config: FoldConfig, label_names: list[str] | None = None) -> list[Split]:
    """All seed x fold splits of ``labels`` (one entry per scan, in cohort order)."""
    labels = np.asarray(labels)
    check_labels(labels, config.n_folds, label_names)
    splits = []
    for seed in config.seeds:
        outer = StratifiedKFold(n_splits=config.n_folds, shuffle=True, random_state=seed)
        for fold, (train_val, test) in enumerate(outer.split(np.zeros(len(labels)), labels)):
            train, val = train_test_split(
                train_val, test_size=config.val_fraction, stratify=labels[train_val], random_state=seed * 1000 + fold,
            )
            splits.append(Split(seed, fold, sorted(map(int, train)), sorted(map(int, val)), sorted(map(int, test))))
    return splits


def save_splits(splits: list[Split], subject_ids: np.ndarray, path: Path) -> None:
    """Write the splits with subject ids, so a fold can be checked by eye or reused by another tool."""
    atomic_write_json(path, [
        {**asdict(s), "test_subjects": [str(subject_ids[i]) for i in s.test]} for s in splits
    ])
