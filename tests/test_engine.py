"""The one training loop (fmgnn.engine), in this process: no Ray."""

import numpy as np
import pytest
import torch

from fmgnn.baselines.gcn import GCNConfig
from fmgnn.baselines.train_gcn import GCNTask
from fmgnn.cohort import Cohort
from fmgnn.engine import LocalRuntime, World, fit, fit_tasks, is_done, read_result, run_local, seed_epoch
from fmgnn.evaluation.splits import FoldConfig, make_splits
from fmgnn.graphs import GraphConfig


def gcn_task(cohort_path, fold=0, epochs=6, patience=100, output=None, name=None):
    cohort = Cohort(cohort_path)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=3))[fold]
    # dropout > 0: resumed runs only match uninterrupted ones if every epoch is reseeded
    return GCNTask(name or f"gcn-{split.name}", str(cohort_path), split, GraphConfig(),
                   GCNConfig(hidden=16, epochs=epochs, patience=patience, dropout=0.5), seed=fold, output=output)


class Killed(RuntimeError):
    pass


class KilledAfter(LocalRuntime):
    """A runtime whose process dies right after the checkpoint of epoch ``epoch``."""

    def __init__(self, checkpoint_dir, epoch):
        super().__init__(checkpoint_dir)
        self.kill_epoch = epoch

    def report(self, metrics, payload):
        super().report(metrics, payload)
        if metrics["epoch"] == self.kill_epoch:
            raise Killed


def test_scores_the_test_part_once_with_the_best_validation_epoch(small_synthetic):
    task = gcn_task(small_synthetic)
    calls = []
    original_test = task.test
    task.test = lambda model: calls.append(1) or original_test(model)
    runtime = LocalRuntime()
    final = fit(task, runtime)
    assert calls == [1]
    losses = [h["val_loss"] for h in final["history"]]
    assert final["best_epoch"] == int(np.argmin(losses)) and final["best_score"] == min(losses)
    assert len(final["test_probabilities"]) == len(task.split.test)
    # every epoch but the last reports on its own; the last one comes with the test metrics
    assert [r["epoch"] for r in runtime.reports] == list(range(6))
    assert [r["done"] for r in runtime.reports] == [False] * 5 + [True]


def test_stops_early_after_patience_epochs_without_a_better_score(small_synthetic):
    task = gcn_task(small_synthetic, epochs=200, patience=3)
    final = fit(task, LocalRuntime())
    assert len(final["history"]) == final["best_epoch"] + 4 < 200


def test_a_killed_run_resumes_to_the_uninterrupted_result(small_synthetic, tmp_path):
    reference = fit(gcn_task(small_synthetic), LocalRuntime())
    with pytest.raises(Killed):
        fit(gcn_task(small_synthetic), KilledAfter(tmp_path, epoch=2))
    resumed = fit(gcn_task(small_synthetic), LocalRuntime(tmp_path))
    assert resumed["resumed_at"] == [3]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]
    np.testing.assert_array_equal(resumed["test_probabilities"], reference["test_probabilities"])


def test_a_checkpoint_of_another_task_is_not_restored(small_synthetic, tmp_path):
    with pytest.raises(Killed):
        fit(gcn_task(small_synthetic, name="first"), KilledAfter(tmp_path, epoch=1))
    other = fit(gcn_task(small_synthetic, name="second"), LocalRuntime(tmp_path))
    assert other["resumed_at"] == [] and len(other["history"]) == 6


def test_tasks_of_a_stage_share_one_runtime_and_finished_ones_are_skipped(small_synthetic, tmp_path):
    tasks = [gcn_task(small_synthetic, fold=k, epochs=3, output=tmp_path / f"fold{k}") for k in range(3)]
    with pytest.raises(Killed):  # dies in the second task's second epoch
        runtime = KilledAfter(tmp_path / "ckpt", epoch=99)
        original = runtime.report

        def report(metrics, payload):
            original(metrics, payload)
            if metrics["task"] == tasks[1].name and metrics["epoch"] == 1:
                raise Killed
        runtime.report = report
        fit_tasks(tasks, runtime)
    assert is_done(tasks[0]) and not is_done(tasks[1])
    assert not hasattr(tasks[0], "train_graphs") and hasattr(tasks[1], "train_graphs")  # a done task is freed
    first = read_result(tasks[0].output)
    results = run_local([gcn_task(small_synthetic, fold=k, epochs=3, output=tmp_path / f"fold{k}")
                         for k in range(3)], tmp_path / "ckpt")
    assert results[0] == first  # read back, not retrained
    assert results[1]["resumed_at"] == [2] and results[2]["resumed_at"] == []
    assert all((tmp_path / f"fold{k}" / "model.pt").is_file() for k in range(3))


def test_seeds_differ_by_epoch_and_rank_and_repeat():
    assert len({seed_epoch(0, e, r) for e in range(3) for r in range(3)}) == 9
    assert seed_epoch(5, 2, 1) == seed_epoch(5, 2, 1)
    a = (seed_epoch(1, 4), torch.rand(3))[1]
    b = (seed_epoch(1, 4), torch.rand(3))[1]
    assert torch.equal(a, b)


def test_each_rank_trains_on_its_own_shard(small_synthetic):
    shards = []
    for rank in range(2):
        task = gcn_task(small_synthetic)
        task.setup(World(rank, 2))
        shards.append({int(i) for i in task.train_graphs.shard_positions(0, task.seed, rank, 2)})
    assert not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == len(gcn_task(small_synthetic).split.train)


def test_one_adamw_over_a_fold_set_steps_each_fold_as_its_own_optimizer_would():
    """StudentFoldsTask trains K fold students with one optimizer, one fold per step."""
    from bleg.train_student import FoldSet

    torch.manual_seed(0)
    students = [torch.nn.Linear(4, 2) for _ in range(2)]
    together = FoldSet([torch.nn.Linear(4, 2) for _ in range(2)])
    together.load_state_dict(FoldSet(students).state_dict())
    shared = torch.optim.AdamW(together.parameters(), lr=0.1, weight_decay=0.01)
    separate = [torch.optim.AdamW(s.parameters(), lr=0.1, weight_decay=0.01) for s in students]
    for step in range(6):
        k = step % 2
        x = torch.randn(3, 4)
        for model, optimizer in ((lambda v, k=k: together(k, v), shared), (students[k], separate[k])):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    for mine, theirs in zip(together.students, students):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b)


def test_long_training_logs_progress(small_synthetic, monkeypatch, caplog):
    import fmgnn.engine

    monkeypatch.setattr(fmgnn.engine, "PROGRESS_INTERVAL_S", 0.0)  # every epoch counts as long
    with caplog.at_level("INFO", logger="fmgnn.engine"):
        fit(gcn_task(small_synthetic, epochs=3, name="gcn-progress"), LocalRuntime())
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gcn-progress: epoch")]
    epochs = [m for m in messages if " of at most " in m]
    assert len(epochs) == 3 and epochs[0].startswith("gcn-progress: epoch 1 of at most 3, train loss ")
    # and within an epoch, once a batch has taken the interval (stage 2 on a large cohort: minutes a batch)
    within = [m for m in messages if "trained so far" in m]
    assert within and within[0].startswith("gcn-progress: epoch 1, 1 batches ("), within


class RankDependentTask:
    """A linear model whose validation score depends on the rank: alone, rank 1 would stop at epoch 3 and
    rank 0 run all 8 epochs."""

    trainable_only, output, seed, epochs, patience = False, None, 0, 8, 2

    def __init__(self, name):
        self.name = name

    def setup(self, world):
        self.world = world

    def build_model(self):
        return torch.nn.Linear(2, 1)

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def batches(self, epoch, generator):
        return [torch.ones(4, 2)]

    def loss(self, model, batch):
        from fmgnn.engine import BatchLoss

        return BatchLoss(model(batch).pow(2).mean(), 4)

    def validate(self, model):
        from fmgnn.engine import Validation

        epoch = len(getattr(self, "scores", []))
        self.scores = [*getattr(self, "scores", []), 0]
        score = -epoch if self.world.rank == 0 else (1.0 if epoch else 0.0)  # rank 1: best at epoch 0
        return Validation(score, {})

    def test(self, model):
        return {}

    def export(self, model, directory):
        pass


def run_rank(rank, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    runtime = LocalRuntime()
    runtime.world = World(rank=rank, size=2)
    final = fit(RankDependentTask("ranks"), runtime)
    (out / f"rank{rank}.txt").write_text(str(len(final["history"])))
    torch.distributed.destroy_process_group()


def test_every_rank_stops_at_rank_zeros_decision(tmp_path):
    """Two ranks that validate differently stop together, on rank 0's scores (a rank stopping alone leaves
    the others in a collective until it times out)."""
    torch.multiprocessing.spawn(run_rank, args=(tmp_path / "init", tmp_path), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text() == "8"


def test_bf16_trains_a_task_to_fp32s_result_within_a_stated_tolerance(small_synthetic):
    """``ray.precision=bf16`` (autocast of the training forward passes) on the CPU: the same GCN fold trains
    to a validation loss within 0.05 and a test AUC within 0.1 of fp32's, and it is not the same computation."""
    fp32 = run_local([gcn_task(small_synthetic, epochs=8)], precision="fp32")[0]
    bf16 = run_local([gcn_task(small_synthetic, epochs=8)], precision="bf16")[0]
    assert bf16["history"][0]["train_loss"] != fp32["history"][0]["train_loss"]  # autocast did run
    assert abs(bf16["best_score"] - fp32["best_score"]) < 0.05
    assert abs(bf16["test_auc"] - fp32["test_auc"]) < 0.1


def test_precision_is_not_free_on_a_rerun():
    from pipelines.job import changed_settings

    assert changed_settings({"ray": {"precision": "fp32", "num_workers": 1}},
                            {"ray": {"precision": "bf16", "num_workers": 4}}, ("ray",)) == ["ray.precision"]
    assert changed_settings({"bleg": {"ray": {"precision": "fp32"}}}, {"bleg": {"ray": {"precision": "bf16"}}},
                            ("bleg.ray",)) == ["bleg.ray.precision"]
