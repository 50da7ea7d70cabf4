"""Folds x seeds, grouped by subject, with the validation split carved out of each training part.

Every model of a run is evaluated on the same :class:`Split` objects (saved as ``splits.json``),
so baselines and methods are compared fold by fold. The test fold is never used for fitting
or for model selection; only the validation scans are.

Scans of one subject (sessions, runs) never sit on two sides of a split: when a cohort holds a
subject more than once, the outer folds are scikit-learn's ``StratifiedGroupKFold`` over subjects and
the validation part is one fold of another ``StratifiedGroupKFold`` inside the training part. A cohort
with one scan per subject keeps the plain stratified k-fold (the same folds as before format 2).
``strategy=leave_site_out`` holds out one whole site per fold (multi-site cohorts such as ABIDE).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold, train_test_split

from fmgnn.errors import InputError
from fmgnn.io import atomic_write_json

if TYPE_CHECKING:
    from fmgnn.cohort import Cohort

log = logging.getLogger(__name__)


@dataclass
class FoldConfig:
    """Args:
        n_folds: Outer stratified folds k (``leave_site_out``: one fold per site instead).
        seeds: One repetition of the k folds per seed (``leave_site_out``: the validation split only).
        val_fraction: Share of each training part held out for validation (stratified, by subject).
        strategy: ``stratified`` (k-fold, grouped by subject) or ``leave_site_out``.
    """

    n_folds: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    val_fraction: float = 0.15
    strategy: Literal["stratified", "leave_site_out"] = "stratified"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError("folds.seeds must name at least one seed")
        if self.n_folds < 2:
            raise InputError(f"folds.n_folds must be >= 2, received {self.n_folds}")
        if not 0.0 < self.val_fraction < 0.5:
            raise InputError(f"folds.val_fraction must be in (0, 0.5), received {self.val_fraction}")
        if self.strategy not in ("stratified", "leave_site_out"):
            raise InputError(f"folds.strategy must be stratified or leave_site_out, received {self.strategy!r}")


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


def check_labels(labels: np.ndarray, n_folds: int, label_names: list[str] | None = None,
                 groups: np.ndarray | None = None) -> None:
    """Fail early, naming the class, when stratified k-fold cannot work on these labels (counted in
    subjects when ``groups`` repeat)."""
    if groups is not None:
        pairs = {(g, int(y)) for g, y in zip(groups, labels)}
        labels = np.array([y for _, y in pairs], dtype=np.int64)
    unit = "subjects" if groups is not None else "scans"
    classes, counts = np.unique(labels, return_counts=True)
    name = (lambda k: f"{k} ({label_names[k]})") if label_names else str
    if len(classes) < 2:
        only = name(int(classes[0])) if len(classes) else "none"
        raise SplitError(f"the cohort has one class only (label {only}); classification needs at least two")
    small = [(name(int(c)), int(n)) for c, n in zip(classes, counts) if n < n_folds]
    if small:
        raise SplitError(
            f"stratified {n_folds}-fold needs at least {n_folds} {unit} per class; "
            + ", ".join(f"label {c} has {n}" for c, n in small)
        )


def make_splits(labels: np.ndarray, config: FoldConfig, label_names: list[str] | None = None,
                groups: np.ndarray | None = None, sites: np.ndarray | None = None) -> list[Split]:
    """All seed x fold splits of ``labels`` (one entry per scan, in cohort order); ``groups`` are the
    scans' subjects, ``sites`` their sites (needed by ``leave_site_out``)."""
    labels = np.asarray(labels)
    if groups is not None and len(np.unique(groups)) == len(groups):
        groups = None  # one scan per subject: nothing to group
    rows = np.zeros(len(labels))
    if config.strategy == "leave_site_out":
        outer_folds = site_folds(labels, groups, sites, label_names)
    else:
        check_labels(labels, config.n_folds, label_names, groups)
    splits = []
    for seed in config.seeds:
        if config.strategy == "leave_site_out":
            outer = outer_folds
        elif groups is None:
            outer = StratifiedKFold(n_splits=config.n_folds, shuffle=True, random_state=seed).split(rows, labels)
        else:
            outer = StratifiedGroupKFold(n_splits=config.n_folds, shuffle=True, random_state=seed).split(
                rows, labels, groups)
        for fold, (train_val, test) in enumerate(outer):
            train, val = validation_split(train_val, labels, groups, config.val_fraction, seed * 1000 + fold)
            splits.append(Split(seed, fold, sorted(map(int, train)), sorted(map(int, val)), sorted(map(int, test))))
    return splits


def validation_split(train_val: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training part's training and validation scans: stratified, and by subject when subjects repeat
    (one of ``round(1 / fraction)`` grouped folds, so the share is close to ``fraction``)."""
    if groups is None:
        n_classes, n_val = len(np.unique(labels[train_val])), math.ceil(fraction * len(train_val))  # as sklearn
        if n_val < n_classes:
            raise SplitError(f"folds.val_fraction={fraction} of a training part of {len(train_val)} scans is "
                             f"{n_val} scan(s), fewer than its {n_classes} classes need; use fewer folds or a larger "
                             "val_fraction")
        return train_test_split(train_val, test_size=fraction, stratify=labels[train_val], random_state=seed)
    inner = StratifiedGroupKFold(n_splits=max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    train, val = next(inner.split(np.zeros(len(train_val)), labels[train_val], groups[train_val]))
    return train_val[train], train_val[val]


def site_folds(labels: np.ndarray, groups: np.ndarray | None, sites: np.ndarray | None,
               label_names: list[str] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """One fold per site: that site's scans are the test part."""
    if sites is None or any(s is None for s in sites):
        raise SplitError("folds.strategy=leave_site_out: every scan needs a site (the cohort's site column)")
    sites = np.asarray(sites, dtype=object)
    if groups is not None:
        spread = {g for g in np.unique(groups) if len(set(sites[groups == g])) > 1}
        if spread:
            raise SplitError(f"folds.strategy=leave_site_out: subject(s) {sorted(spread)[:5]} were scanned at more "
                             "than one site, so a held-out site would share them with training")
    folds = list(LeaveOneGroupOut().split(np.zeros(len(labels)), labels, sites))
    if len(folds) < 2:
        raise SplitError("folds.strategy=leave_site_out: the cohort has one site only")
    for train, test in folds:
        if len(np.unique(labels[train])) < 2:
            site = sites[test[0]]
            raise SplitError(f"folds.strategy=leave_site_out: without site {site} the training part has one class "
                             f"only ({label_names[int(labels[train][0])] if label_names else labels[train][0]})")
    return folds


SMALL_TEST_PART = 5  # fewer test scans or subjects than this: a fold's accuracy moves in steps of 20% or more


def cohort_splits(cohort: Cohort, config: FoldConfig) -> list[Split]:
    """``make_splits`` over a cohort's labels, subjects and sites; warns when a test part is tiny."""
    subjects = cohort.subject_ids()
    splits = make_splits(cohort.labels(), config, cohort.metadata.label_names, subjects, cohort.sites())
    smallest = min(splits, key=lambda s: len({subjects[i] for i in s.test}))
    n_subjects = len({subjects[i] for i in smallest.test})
    if n_subjects < SMALL_TEST_PART:
        log.warning("folds: test part %s holds %d scan(s) of %d subject(s); with fewer than %d, per-fold metrics "
                    "are coarse and their spread unreliable (use fewer folds)", smallest.name, len(smallest.test),
                    n_subjects, SMALL_TEST_PART)
    return splits


def save_splits(splits: list[Split], cohort: Cohort, path: Path) -> None:
    """Write the splits with scan and subject ids, so a fold can be checked by eye or reused by another tool."""
    scans, subjects = cohort.scan_ids(), cohort.subject_ids()
    atomic_write_json(path, [
        {**asdict(s), "test_scans": [str(scans[i]) for i in s.test],
         "test_subjects": sorted({str(subjects[i]) for i in s.test})} for s in splits
    ])
