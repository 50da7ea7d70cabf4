"""Permutation test of a whole pipeline: would it score as well with the labels shuffled?

As scikit-learn's ``permutation_test_score`` does for one estimator, the labels are permuted and
everything is run again: folds, model selection, every stage that reads a label (BLEG's stage-2
answers and its teacher included). Labels are permuted among subjects, not scans, so the scans of one
subject keep one label, as real labels do, and a subject's repeated scans cannot make a shuffled label
look learnable. The p-value is ``(1 + #{permuted score >= real score}) / (1 + N)`` (Ojala and Garriga
2010), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmgnn.cohort import METADATA_KEY, Cohort
from fmgnn.io import atomic_path


def permuted_labels(labels: np.ndarray, subjects: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` shuffled among subjects: every scan of a subject gets that subject's new label."""
    labels, subjects = np.asarray(labels), np.asarray(subjects, dtype=object).astype(str)
    unique, first, subject_of_scan = np.unique(subjects, return_index=True, return_inverse=True)
    shuffled = np.random.default_rng(seed).permutation(labels[first])
    return shuffled[subject_of_scan]


def write_permuted_cohort(cohort: Cohort, labels: np.ndarray, path: Path) -> Path:
    """A copy of ``cohort`` whose labels are ``labels`` (its metadata, scans and ids unchanged)."""
    table = cohort.table
    names = np.asarray(cohort.metadata.label_names, dtype=object)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    table = table.set_column(table.schema.get_field_index("label_name"), "label_name",
                             pa.array(names[labels].tolist(), pa.string()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: cohort.metadata.to_json()}), tmp)
    return path


def permutation_p_value(score: float, permuted: Sequence[float]) -> float:
    """The share of permutations scoring at least ``score``, counting the real labels as one of them."""
    permuted = np.asarray(permuted, dtype=np.float64)
    return float((1 + np.sum(permuted >= score)) / (1 + permuted.size))
