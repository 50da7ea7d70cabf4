"""MLflow tracking of a job's run: parameters, one nested run per trained task with its epoch curves."""

import json

import mlflow

from fmgnn.config import load_config
from pipelines.train import BaselineJobConfig, run_baselines


def test_a_baseline_job_is_in_mlflow_with_every_fold_and_its_curves(small_synthetic, tmp_path):
    config = load_config(BaselineJobConfig, None, [
        f"cohort={small_synthetic}", f"run_dir={tmp_path / 'runs' / 'baseline'}", "folds.n_folds=2",
        "gcn.epochs=3", "gcn.hidden=8", "ray.num_workers=0"])  # the plain loop: no Ray needed
    results = run_baselines(config)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the default store
    experiment = client.get_experiment_by_name("fmgnn")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    job = runs["baseline:baseline"]
    assert job.data.params["gcn.epochs"] == "3" and job.data.params["folds.n_folds"] == "2"
    assert job.data.metrics["gcn.accuracy.mean"] == results["models"]["gcn"]["summary"]["accuracy"]["mean"]
    assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(job.info.run_id)}
    folds = {name: run for name, run in runs.items() if name.startswith("gcn-seed0_fold")}
    assert len(folds) == 2
    for split, fold in folds.items():
        record = json.loads((tmp_path / "runs" / "baseline" / "gcn" / f"{split.removeprefix('gcn-')}.json").read_text())
        assert fold.data.tags["mlflow.parentRunId"] == job.info.run_id
        curve = client.get_metric_history(fold.info.run_id, "val_loss")
        assert [m.step for m in curve] == [0, 1, 2]
        assert fold.data.metrics["test_accuracy"] == record["metrics"]["accuracy"]
        assert "result.json" in {a.path for a in client.list_artifacts(fold.info.run_id)}


def test_jobs_started_at_once_share_a_new_embedded_store(tmp_path):
    """MLflow migrates a new SQLite file without a lock; four jobs opening it at once must all get a run."""
    import subprocess
    import sys

    script = ("import sys; from fmgnn.tracking import JobRun, TrackingConfig; "
              "print(JobRun(TrackingConfig(), sys.argv[1], 'race', {'a': 1}).run_id)")
    jobs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "runs" / f"job{i}")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outputs = [job.communicate() for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, [err[-2000:] for _, err in outputs]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fmgnn")
    run_ids = sorted(out.strip() for out, _ in outputs)
    assert sorted(r.info.run_id for r in client.search_runs([experiment.experiment_id])) == run_ids
