import json

import numpy as np
import pytest
import torch

from fmgnn.baselines.gcn import GCNClassifier, GCNConfig
from fmgnn.baselines.logistic import LogisticConfig, fc_features, fit_logistic
from fmgnn.baselines.train_gcn import GCNTask
from fmgnn.cohort import Cohort
from fmgnn.config import load_config
from fmgnn.engine import run_local
from fmgnn.evaluation.splits import FoldConfig, make_splits
from fmgnn.graphs import GraphConfig, build_graphs
from pipelines.ray_session import RayConfig
from pipelines.train import BaselineJobConfig, run_baselines
from pipelines.trainers import make_trainer


def test_gcn_shapes_and_reset_parameters():
    fc = np.stack([np.corrcoef(np.random.default_rng(i).normal(size=(30, 8)).T) for i in range(3)])
    graphs = build_graphs(fc, np.array([0, 1, 0]), GraphConfig())
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(graphs)
    model = GCNClassifier(8, 2, GCNConfig(hidden=16, n_layers=3))
    assert model(batch.x, batch.edge_index, batch.edge_weight, batch.batch).shape == (3, 2)
    before = model.head.weight.detach().clone()
    model.reset_parameters()
    assert not torch.equal(before, model.head.weight)


def test_logistic_learns_the_real_cohort(nmda_cohort):
    """The data README: a plain logistic regression reaches about 0.79; a broken pipeline would not."""
    cohort = Cohort(nmda_cohort)
    x, y = fc_features(cohort.fc()), cohort.labels()
    accuracies = []
    for split in make_splits(y, FoldConfig(n_folds=5)):
        model, choice = fit_logistic(x[split.train], y[split.train], x[split.val], y[split.val], LogisticConfig())
        assert choice["C"] in LogisticConfig().c_grid
        accuracies.append((model.predict(x[split.test]) == y[split.test]).mean())
    assert np.mean(accuracies) > 0.7


class PoisonedTestSubjects:
    """The cohort as logistic_folds reads it, with the test subjects' connectivity and labels scrambled."""

    def __init__(self, cohort: Cohort, test: list[int]) -> None:
        self.cohort, self.test = cohort, test

    def __len__(self) -> int:
        return len(self.cohort)

    def fc(self, indices: np.ndarray | None = None) -> np.ndarray:
        fc = self.cohort.fc().copy()
        fc[self.test] = np.random.default_rng(0).normal(size=fc[self.test].shape) * 100
        return fc if indices is None else fc[indices]

    def labels(self) -> np.ndarray:
        labels = self.cohort.labels().copy()
        labels[self.test] = 1 - labels[self.test]
        return labels


def test_model_selection_never_reads_the_test_fold(nmda_cohort, tmp_path):
    """The baseline job's logistic regression, given the cohort and its splits: scrambling the test
    subjects changes neither the chosen C nor its validation score (no scaler or C fitted on them)."""
    from pipelines.classification import logistic_folds

    cohort = Cohort(nmda_cohort)
    splits = make_splits(cohort.labels(), FoldConfig(n_folds=5))[:2]
    clean = logistic_folds(cohort, splits, LogisticConfig(), tmp_path / "clean")
    for split, result in zip(splits, clean):
        poisoned = logistic_folds(PoisonedTestSubjects(cohort, split.test), [split], LogisticConfig(),
                                tmp_path / "poisoned")[0]
        assert poisoned["selection"] == result["selection"]
        assert poisoned["test_probabilities"] != result["test_probabilities"]  # the scrambled inputs were used


def gcn_task(cohort_path, epochs=4):
    cohort = Cohort(cohort_path)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=3))[0]
    return GCNTask("gcn", str(cohort_path), split, GraphConfig(), GCNConfig(hidden=16, epochs=epochs, patience=100))


@pytest.mark.ray
def test_ray_train_resumes_the_task_from_its_checkpoint(small_synthetic, ray_session, tmp_path):
    config = RayConfig(num_workers=1, cpus_per_worker=0.5)
    first = make_trainer([gcn_task(small_synthetic, epochs=3)], "resume", config, str(tmp_path)).fit()
    assert first.metrics["epoch"] == 2 and first.metrics["done"]
    # Same run name, more epochs: training continues at epoch 3, history kept.
    second = make_trainer([gcn_task(small_synthetic, epochs=5)], "resume", config, str(tmp_path)).fit()
    assert second.metrics["epoch"] == 4 and second.metrics["resumed_at"] == [3]
    with second.checkpoint.as_directory() as directory:
        state = torch.load(f"{directory}/state.pt", weights_only=False)
    assert [h["epoch"] for h in state["state"].history] == [0, 1, 2, 3, 4]
    # Ray Train and the plain loop are the same computation (a worker of under one CPU runs one torch
    # thread; another thread count changes float sums, and training amplifies that to ~1e-4).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = run_local([gcn_task(small_synthetic, epochs=5)])[0]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(second.metrics["test_probabilities"], plain["test_probabilities"], atol=1e-6)


@pytest.mark.ray
def test_baselines_job_with_two_ddp_workers(small_synthetic, ray_session, tmp_path):
    config = load_config(BaselineJobConfig, None, [
        f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", "folds.n_folds=3",
        "gcn.epochs=3", "gcn.hidden=16", "ray.num_workers=2", "ray.cpus_per_worker=0.5",
        "ray.max_concurrent_runs=1",  # one 2-worker group trains the 3 folds
    ])
    results = run_baselines(config)
    assert set(results["models"]) == {"logistic", "gcn"}
    for model in ("logistic", "gcn"):
        folds = sorted((tmp_path / "run" / model).glob("seed0_fold*.json"))
        assert len(folds) == 3
        record = json.loads(folds[0].read_text())
        assert len(record["test_probabilities"]) == len(record["test_indices"])
    assert {json.loads(p.read_text())["world_size"] for p in (tmp_path / "run" / "gcn").glob("seed0_fold*.json")} == {2}
    for name in ("config.yaml", "versions.json", "splits.json", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    assert results["models"]["logistic"]["summary"]["accuracy"]["mean"] > 0.7  # effect_size 0.8 is easy
    # A rerun finds every fold done and trains nothing.
    trained = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "gcn").rglob("*") if p.is_file()}
    again = run_baselines(config)
    assert again["models"]["gcn"]["summary"] == results["models"]["gcn"]["summary"]
    assert {p: p.stat().st_mtime_ns for p in trained} == trained


def test_permuted_labels_score_at_chance_and_the_real_ones_do_not(small_synthetic, tmp_path):
    from fmgnn.evaluation.permutation import permuted_labels

    config = load_config(BaselineJobConfig, None, [
        f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", "models=[logistic]", "folds.n_folds=5",
        "permutations=8", "tracking.enabled=false", "ray.num_workers=0"])
    result = run_baselines(config)["permutation"]["models"]["logistic"]
    assert result["score"] > 0.75 and len(result["permuted"]) == 8
    assert abs(result["permuted_mean"] - 0.5) < 0.1  # the synthetic cohort is balanced: chance is 0.5
    assert result["p_value"] == pytest.approx((1 + sum(p >= result["score"] for p in result["permuted"])) / 9)
    assert result["p_value"] < 0.15
    # Each shuffle reran the job on its own copy: the same scans and ids, the same label counts, new labels.
    cohort = Cohort(small_synthetic)
    shuffled = Cohort(tmp_path / "run" / "permutations" / "perm000" / "cohort.parquet")
    assert shuffled.scan_ids().tolist() == cohort.scan_ids().tolist()
    assert sorted(shuffled.labels()) == sorted(cohort.labels()) and (shuffled.labels() != cohort.labels()).any()
    assert json.loads((tmp_path / "run" / "permutations" / "perm007" / "run" / "metrics.json").read_text())
    # Shuffled among subjects: a subject's scans keep one label.
    subjects = np.array(["a", "a", "b", "c", "c", "c", "d"], dtype=object)
    for seed in range(5):
        labels = permuted_labels(np.array([0, 0, 1, 1, 1, 1, 0]), subjects, seed)
        assert len({labels[i] for i in range(7) if subjects[i] == "c"}) == 1 and labels[0] == labels[1]
        assert sorted(labels[[0, 2, 3, 6]]) == [0, 0, 1, 1]


@pytest.mark.slow
def test_gcn_alone_learns_the_group_effect_that_logistic_regression_finds(tmp_path):
    """Planted: a limbic/subcortical coupling effect (60 subjects). Logistic regression shows it is learnable;
    the GCN must learn it too. Validated with BatchNorm statistics averaged over steps with other weights, the
    GCN predicted one class for every subject (balanced accuracy 0.500 on every fold) until
    ``fmgnn.engine.refresh_batch_norm``."""
    from fmgnn.config import load_config
    from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
    from pipelines.bleg import BLEGJobConfig, run_bleg

    cohort = tmp_path / "effect.parquet"
    ingest_synthetic(cohort, SyntheticConfig(n_subjects=60, n_timepoints=200, effect_size=0.6, seed=0))
    summary = run_bleg(load_config(BLEGJobConfig, None, [
        f"cohort={cohort}", f"run_dir={tmp_path / 'run'}", "variants=[logistic,gcn_alone]", "folds.n_folds=3",
        "stage3.epochs=40", "stage3.patience=10", "ray.num_workers=0", "tracking.enabled=false"]))
    balanced = {m: r["summary"]["balanced_accuracy"]["mean"] for m, r in summary["models"].items()}
    assert balanced["logistic"] >= 0.7
    assert balanced["gcn_alone"] >= 0.65, balanced


@pytest.mark.ray
def test_on_ray_the_logistic_features_are_built_in_a_task_not_the_driver(ray_session, small_synthetic, tmp_path,
                                                                          monkeypatch):
    """The feature matrix (scans x region pairs) grows with the cohort; the driver runs on the head node."""
    import pipelines.classification

    base = [f"cohort={small_synthetic}", "models=[logistic]", "folds.n_folds=3", "tracking.enabled=false"]
    here = run_baselines(load_config(BaselineJobConfig, None, [*base, f"run_dir={tmp_path / 'here'}",
                                                               "ray.num_workers=0"]))

    def built_in_the_driver(*args):
        raise AssertionError("the logistic features were built in the driver")

    monkeypatch.setattr(pipelines.classification, "cohort_features", built_in_the_driver)
    with pytest.raises(AssertionError, match="built in the driver"):  # the in-process path does build them here
        run_baselines(load_config(BaselineJobConfig, None, [*base, f"run_dir={tmp_path / 'again'}",
                                                            "ray.num_workers=0"]))
    on_ray = run_baselines(load_config(BaselineJobConfig, None, [*base, f"run_dir={tmp_path / 'ray'}",
                                                                 "ray.num_workers=1"]))
    assert on_ray["models"]["logistic"]["summary"] == here["models"]["logistic"]["summary"]
    assert len(list((tmp_path / "ray" / "logistic").glob("seed*_fold*.json"))) == 3
