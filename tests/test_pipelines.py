"""The entry points as a user runs them: subprocesses from the repo root, no install needed."""

import subprocess
import sys
from pathlib import Path

import pytest

from fmgnn.cohort import Cohort
from tests.conftest import fmgnn_in_process

REPO = Path(__file__).resolve().parents[1]


def run_module(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ingest_corrpops_from_the_command_line(nmda_npz, tmp_path):
    out = tmp_path / "nmda.parquet"
    result = run_module("pipelines.ingest", "corrpops", str(nmda_npz), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "corrpops: 86 subjects, one scan each (control: 43, diagnosed: 43)" in result.stdout
    assert "dropped 2 regions missing in every subject: Pallidum_L, Pallidum_R" in result.stdout
    assert len(Cohort(out)) == 86


def test_ingest_errors_are_one_clear_line(tmp_path):
    missing = str(tmp_path / "missing.npz")
    result = fmgnn_in_process("ingest", "corrpops", missing, "-o", str(tmp_path / "x.parquet"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"fmgnn ingest: error: {tmp_path / 'missing.npz'}: file not found"
    result = fmgnn_in_process("ingest", "synthetic", "-o", str(tmp_path / "x.parquet"), "n_subjects=ten")
    assert result.returncode == 2 and "n_subjects: expected int, received 'ten'" in result.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_fmgnn_cli_dispatches(tmp_path):
    result = run_module("pipelines.cli", "--help")
    assert result.returncode == 0 and "ingest" in result.stdout and "train" in result.stdout
    result = run_module("pipelines.cli", "ingest", "synthetic", "-o", str(tmp_path / "s.parquet"), "n_subjects=12")
    assert result.returncode == 0, result.stderr
    assert len(Cohort(tmp_path / "s.parquet")) == 12
    assert run_module("pipelines.cli", "frobnicate").returncode == 2


def test_train_errors_name_the_problem(tmp_path):
    import numpy as np

    from fmgnn.cohort import CohortMetadata, CohortWriter, Scan

    result = fmgnn_in_process("train", "baseline", f"cohort={tmp_path / 'none.parquet'}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"fmgnn train: error: {tmp_path / 'none.parquet'}: cohort file not found"
    one_class = tmp_path / "one_class.parquet"
    metadata = CohortMetadata(name="t", atlas="none", roi_names=["a", "b", "c"], label_names=["hc", "pt"], task="t")
    with CohortWriter(one_class, metadata) as writer:
        for i in range(12):
            writer.add(Scan(f"s{i}", 0, timeseries=np.random.default_rng(i).normal(size=(10, 3))))
    result = fmgnn_in_process("train", "baseline", f"cohort={one_class}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "the cohort has one class only (label 0 (hc))" in result.stderr


def test_a_second_job_on_a_run_folder_in_use_gets_one_clear_error(small_synthetic, tmp_path):
    from fmgnn.evaluation.splits import FoldConfig
    from fmgnn.io import run_folder_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"earlier": true}')
    with run_folder_lock(run_dir, "train baseline"):  # a first job holds the folder
        result = run_module("pipelines.train", "baseline", f"cohort={small_synthetic}", f"run_dir={run_dir}",
                            "models=[logistic]", "tracking.enabled=false", "folds.n_folds=3")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (f"fmgnn train: error: {run_dir}: another train baseline job is writing this "
                                     "folder; wait for it to finish or give this one another folder")
    assert (run_dir / "metrics.json").read_text() == '{"earlier": true}'
    from pipelines.ray_session import RayConfig
    from pipelines.train import BaselineJobConfig, run_baselines

    # released: the folder is free again
    run_baselines(BaselineJobConfig(cohort=str(small_synthetic), run_dir=str(run_dir), models=["logistic"],
                                    folds=FoldConfig(n_folds=3), ray=RayConfig(num_workers=0)))


def test_only_input_errors_become_one_line_and_bugs_keep_their_traceback(capsys):
    from fmgnn.cohort import CohortError
    from pipelines.errors import exit_on_input_error

    def bad_input():
        raise CohortError("cohorts/x.parquet: subject s1: fc_triu has 3 values, expected 4005")

    assert exit_on_input_error("train", bad_input) == 2
    assert capsys.readouterr().err.strip() == \
        "fmgnn train: error: cohorts/x.parquet: subject s1: fc_triu has 3 values, expected 4005"

    def bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(ValueError, match="broadcast"):
        exit_on_input_error("train", bug)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.system
def test_two_jobs_started_at_once_on_one_machine_both_finish(small_synthetic, tmp_path):
    """Each embedded Ray is its own; Ray Train's actors of one must not look for the other's."""
    command = [sys.executable, "-m", "pipelines.train", "baseline", f"cohort={small_synthetic}", "models=[gcn]",
               "folds.n_folds=2", "gcn.epochs=1", "gcn.hidden=8", "ray.cpus_per_worker=0.5",
               "ray.max_concurrent_runs=1",  # one trainer per job
               # 2 logical CPUs each, not the default 4 per core: two instances on 2 cores would otherwise each
               # start a burst of worker processes that import torch at once.
               "ray.num_cpus=2"]
    jobs = [subprocess.Popen([*command, f"run_dir={tmp_path / f'run{i}'}"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [job.communicate(timeout=400)[0] for job in jobs]
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output[-3000:]
        assert "Found multiple active Ray instances" not in output
    for i in range(2):
        assert (tmp_path / f"run{i}" / "metrics.json").is_file()
