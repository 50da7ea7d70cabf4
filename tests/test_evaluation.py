import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmgnn.evaluation.metrics import classification_metrics, majority_rate, mean_std, summarize
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


def test_scans_of_one_subject_never_straddle_train_validation_and_test():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"sub-{i:02d}" for i in range(40)], rng.integers(1, 4, 40))  # 1-3 runs each
    labels = np.array([int(s[-2:]) % 2 for s in subjects])
    splits = make_splits(labels, FoldConfig(n_folds=5, seeds=[0, 1], val_fraction=0.2), groups=subjects)
    assert len(splits) == 10
    for s in splits:
        train, val, test = ({subjects[i] for i in part} for part in (s.train, s.val, s.test))
        assert not train & val and not train & test and not val & test, s.name
        assert len(s.train) + len(s.val) + len(s.test) == len(subjects)
        assert 0.1 < len(s.val) / (len(s.train) + len(s.val)) < 0.35  # one of 5 grouped folds
    for seed in (0, 1):  # every scan tested exactly once per seed
        assert sorted(i for s in splits if s.seed == seed for i in s.test) == list(range(len(subjects)))
    # With one scan per subject the folds are the plain stratified ones, as before cohort format 2.
    unique = np.array([f"s{i}" for i in range(50)])
    flat = np.array([0] * 30 + [1] * 20)
    assert make_splits(flat, FoldConfig(n_folds=5), groups=unique) == make_splits(flat, FoldConfig(n_folds=5))


def test_leave_site_out_holds_out_whole_sites():
    sites = np.array(["a"] * 12 + ["b"] * 10 + ["c"] * 8, dtype=object)
    labels = np.array([0, 1] * 15)
    splits = make_splits(labels, FoldConfig(strategy="leave_site_out", seeds=[0, 1]), sites=sites)
    assert len(splits) == 6 and {frozenset(sites[s.test]) for s in splits} == {frozenset("a"), frozenset("b"),
                                                                                 frozenset("c")}
    for s in splits:
        assert set(sites[s.test]).isdisjoint(sites[s.train + s.val])
    with pytest.raises(SplitError, match="every scan needs a site"):
        make_splits(labels, FoldConfig(strategy="leave_site_out"))
    with pytest.raises(SplitError, match=r"subject\(s\) \['x'\] were scanned at more than one site"):
        groups = np.array(["x", "x"] + [f"s{i}" for i in range(28)], dtype=object)
        make_splits(labels, FoldConfig(strategy="leave_site_out"), groups=groups,
                    sites=np.array(["a", "b", *sites[2:]], dtype=object))
    with pytest.raises(SplitError, match="without site a the training part has one class only"):
        make_splits(np.array([0, 1] * 6 + [0] * 18), FoldConfig(strategy="leave_site_out"), sites=sites)


def test_one_class_and_tiny_class_are_errors():
    with pytest.raises(SplitError, match=r"one class only \(label 0 \(control\)\)"):
        make_splits(np.zeros(20, dtype=int), FoldConfig(n_folds=5), ["control", "patient"])
    with pytest.raises(SplitError, match="label 1 has 3"):
        make_splits(np.array([0] * 20 + [1] * 3), FoldConfig(n_folds=5))
    # Counted in subjects when subjects repeat: 6 scans of 3 patients cannot fill 5 folds.
    with pytest.raises(SplitError, match="at least 5 subjects per class; label 1 has 3"):
        make_splits(np.array([0] * 20 + [1] * 6), FoldConfig(n_folds=5),
                    groups=np.array([f"c{i}" for i in range(20)] + ["p1", "p1", "p2", "p2", "p3", "p3"]))


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
    # One-vs-rest AUCs by hand (ties count a half): class 0: 1, class 1: 2.5/3, class 2: 3/4; their mean.
    assert m["accuracy"] == 0.75 and m["auc"] == pytest.approx((1 + 2.5 / 3 + 0.75) / 3)
    summary = summarize([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert summary["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_corrected_resampled_ttest_reduces_to_the_paired_t_test_and_widens_with_overlap():
    from scipy import stats

    from fmgnn.evaluation.paired import corrected_resampled_ttest

    rng = np.random.default_rng(0)
    ours, theirs = rng.normal(0.75, 0.05, 30), rng.normal(0.72, 0.05, 30)
    mean, low, high, p = corrected_resampled_ttest(ours - theirs, test_train_ratio=0.0)
    plain = stats.ttest_rel(ours, theirs)
    assert mean == pytest.approx((ours - theirs).mean()) and p == pytest.approx(plain.pvalue)
    interval = plain.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    # 10-fold: each test fold is 1/9 of its training part; the corrected interval is wider, p larger.
    _, low_c, high_c, p_c = corrected_resampled_ttest(ours - theirs, test_train_ratio=1 / 9)
    assert (high_c - low_c) / (high - low) == pytest.approx(np.sqrt((1 / 30 + 1 / 9) / (1 / 30)))
    assert p_c > p


def test_paired_comparison_finds_a_planted_gain_and_not_a_null_one():
    from fmgnn.evaluation.paired import best_of, compare_to_reference

    rng = np.random.default_rng(1)
    splits = [f"seed{s}_fold{f}" for s in range(3) for f in range(10)]
    fold_difficulty = rng.normal(0.0, 0.08, len(splits))  # shared by all models: what pairing removes
    base = {s: {"accuracy": 0.70 + d} for s, d in zip(splits, fold_difficulty)}
    better = {s: {"accuracy": 0.70 + d + 0.04 + rng.normal(0, 0.01)} for s, d in zip(splits, fold_difficulty)}
    same = {s: {"accuracy": 0.70 + d + rng.normal(0, 0.01)} for s, d in zip(splits, fold_difficulty)}
    del same[splits[-1]]  # a split one model lacks is left out of its pairs
    paired = compare_to_reference({"gcn": base, "bleg": better, "other": same}, "gcn", ["accuracy"], 1 / 9)
    gain, null = paired["models"]["bleg"]["accuracy"], paired["models"]["other"]["accuracy"]
    assert gain["p_value"] < 0.001 and gain["ci95_low"] > 0.02 and gain["n_splits"] == 30
    assert null["p_value"] > 0.05 and null["ci95_low"] < 0 < null["ci95_high"] and null["n_splits"] == 29
    # Unpaired, the same gain is inside the fold-to-fold spread (std 0.08 against a 0.04 gain).
    assert np.std([v["accuracy"] for v in base.values()]) > 0.04
    assert best_of({"logistic": 0.71, "gcn_alone": 0.69, "bleg": 0.8}, ["logistic", "gcn_alone"]) == "logistic"


def test_one_run_has_no_spread_and_the_majority_rate_is_the_training_majority_on_test():
    one = summarize([{"accuracy": 0.7}])["accuracy"]
    assert one["std"] is None and mean_std(one) == "0.700 (1 run)"
    assert mean_std(summarize([{"accuracy": 0.5}, {"accuracy": 0.7}])["accuracy"]) == "0.600 ± 0.141"
    labels = np.array([0] * 30 + [1] * 20)
    splits = make_splits(labels, FoldConfig(n_folds=5))
    chance = majority_rate(labels, splits)
    assert chance["majority_accuracy"] == pytest.approx(0.6) and chance["test_sizes"] == [10] * 5


def test_a_tiny_test_part_is_warned_about(tmp_path, caplog):
    from fmgnn.cohort import Cohort, CohortMetadata, CohortWriter, Scan
    from fmgnn.evaluation.splits import cohort_splits

    rng = np.random.default_rng(0)
    metadata = CohortMetadata(name="t", atlas="none", roi_names=["a", "b", "c"], label_names=["x", "y"], task="t")
    with CohortWriter(tmp_path / "c.parquet", metadata) as writer:
        for i in range(8):
            writer.add(Scan(f"s{i}", i % 2, timeseries=rng.normal(size=(20, 3))))
    with pytest.raises(SplitError, match=r"val_fraction=0.15 of a training part of 6 scans is 1 scan\(s\), fewer"):
        cohort_splits(Cohort(tmp_path / "c.parquet"), FoldConfig(n_folds=4))
    with caplog.at_level("WARNING"):
        cohort_splits(Cohort(tmp_path / "c.parquet"), FoldConfig(n_folds=4, val_fraction=0.4))
    assert "holds 2 scan(s) of 2 subject(s); with fewer than 5" in caplog.text


def test_relative_r2_only_over_a_baseline_that_explains_something():
    from fmgnn.evaluation.paired import format_relative, relative_r2

    assert relative_r2(0.9, 0.8) == pytest.approx(0.125)
    assert relative_r2(0.007, -0.014) is None  # the "+149.9%" of two models at the mean
    assert relative_r2(0.2, 0.05) is None
    assert format_relative(relative_r2(0.7, 0.8)) == "-12.5% of its R^2"
    assert "below 0.1" in format_relative(None)


def test_a_one_split_difference_prints_no_interval():
    from fmgnn.evaluation.paired import paired_difference
    from pipelines.report import paired_table

    one = paired_difference("bleg", "gcn", "accuracy", {"bleg": {"s0": {"accuracy": 0.7}},
                                                        "gcn": {"s0": {"accuracy": 0.6}}}, 0.2)
    assert "[95% CI n/a], p = n/a" in one.line() and "nan" not in one.line()
    row = paired_table("t", [one.to_dict()]).rows[0]
    assert row[4] == "n/a" and row[5] == "n/a"
    two = paired_difference("bleg", "gcn", "accuracy", {"bleg": {"s0": {"accuracy": 0.7}, "s1": {"accuracy": 0.8}},
                                                        "gcn": {"s0": {"accuracy": 0.6}, "s1": {"accuracy": 0.6}}}, 0.2)
    assert " to " in paired_table("t", [two.to_dict()]).rows[0][4]
