import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmgnn.evaluation.metrics import classification_metrics, summarize
from fmgnn.evaluation.splits import FoldConfig, SplitError, make_splits


def test_splits_partition_and_keep_validation_inside_training():
    labels = np.array([0] * 30 + [1] * 20)
    splits = make_splits(labels, FoldConfig(n_folds=5, seeds=[0, 1], val_fraction=0.2))
    assert len(splits) == 10
    for seed in (0, 1):
        tests = [i for s in splits if s.seed == seed for i in s.test]
        assert sorted(tests) == list(range(50))  # every subject tested exactly once per seed
    for s in splits:
        assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
        assert len(s.train) + len(s.val) + len(s.test) == 50
        assert labels[s.test].sum() == 4  # stratified: 20 positives over 5 folds
    assert splits[0].test != splits[5].test  # seeds reshuffle


def test_one_class_and_tiny_class_are_errors():
    with pytest.raises(SplitError, match=r"one class only \(label 0 \(control\)\)"):
        make_splits(np.zeros(20, dtype=int), FoldConfig(n_folds=5), ["control", "patient"])
    with pytest.raises(SplitError, match="label 1 has 3"):
        make_splits(np.array([0] * 20 + [1] * 3), FoldConfig(n_folds=5))


def test_metrics_binary_known_values_and_auc_from_probabilities():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.45, 0.9])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["auc"] != pytest.approx(roc_auc_score(y, p1 > 0.5))  # not from hard predictions


def test_metrics_multiclass_and_summary():
    y = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 2, 1]] * 0.7 + 0.1
    m = classification_metrics(y, probabilities)
    assert m["accuracy"] == 0.75 and 0 < m["auc"] <= 1
    summary = summarize([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert summary["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
