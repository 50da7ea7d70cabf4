"""Shared fixtures: one local Ray instance for the whole suite, real data from ../shared/data, and one
small main-job run whose stages (a BLEG run, a sweep, a foundation model, FIMP runs, the report) the
main-job, sweep and report tests share: a Ray Train start-up costs 17-30 s on 2 cores, and the suite
pays for each one it starts."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NMDA = SHARED_DATA / "corrpops" / "nmda_aal.npz"


def fmgnn_in_process(*args: str) -> subprocess.CompletedProcess:
    """``fmgnn ARGS`` through the same ``main`` the installed command runs, in this process: for commands
    that must stop on bad input before they start anything. A new interpreter costs 7-15 s of imports here
    (torch, PyG, Ray, scikit-learn); tests/test_pipelines.py runs the installed command itself."""
    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["fmgnn", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def ray_session():
    """ray.init costs seconds: start it once, with the job settings the pipelines use. 4 logical CPUs, not the
    embedded default's 8 on 2 cores: each logical CPU can be a worker process that imports torch when a Ray
    Data stage starts, and 8 at once made an augmentation take 30 s instead of 23 (bench/RESULTS.md)."""
    import ray

    from pipelines.ray_session import RayConfig, start_ray

    start_ray(RayConfig(num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def nmda_npz() -> Path:
    if not NMDA.is_file():  # a missing data folder is a broken checkout, not a reason to test less
        pytest.fail(f"real data not found at {NMDA} (see ../shared/data/README.md)")
    return NMDA


@pytest.fixture(scope="session")
def nmda_cohort(nmda_npz: Path, tmp_path_factory) -> Path:
    from fmgnn.sources.corrpops import ingest_corrpops

    path = tmp_path_factory.mktemp("cohorts") / "nmda_aal.parquet"
    ingest_corrpops(nmda_npz, path)
    return path


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic

    path = tmp_path_factory.mktemp("cohorts") / "synthetic.parquet"
    ingest_synthetic(path, SyntheticConfig(n_subjects=60, n_timepoints=60, effect_size=0.8, seed=3))
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


# configs/main.yaml, made small: every stage runs, each on a few subjects and epochs. BLEG trains under
# Ray Train with 2 DDP workers (one worker group per stage; test_bleg_pipeline.py checks this run) and the
# sweep's trials each drive a trainer, as in the embedded default; pretraining and FIMP run the same loop
# in the job's process (``ray.num_workers=0``), since their Ray Train path has tests of its own
# (test_fimp_pipeline.py).
MAIN_JOB_SMALL = [
    "synthetic.n_subjects=24", "synthetic.effect_size=0.8", "augment.engine.kind=rules", "bleg.folds.n_folds=2",
    "bleg.stage2.encoder_hidden=[32]", "bleg.stage3.epochs=4", "bleg.stage3.student.bottleneck=16",
    "bleg.stage3.student.head_hidden=16", "bleg.lm.max_length=160", "bleg.ray.max_concurrent_runs=1",
    "bleg.ray.num_workers=2", "bleg.ray.cpus_per_worker=0.5",
    "tune.num_samples=2", "tune.space.stage3.epochs=4", "tune.grace_period=2", "pretrain.corpus=[synthetic]",
    "pretrain.synthetic.n_subjects=12",
    "pretrain.optim.epochs=2", "pretrain.foundation.hidden=16", "pretrain.foundation.intermediate=32",
    "pretrain.foundation.layers=1", "pretrain.ray.num_workers=0", "fimp.optim.epochs=2", "fimp.model.gnn_hidden=16",
    "fimp.ray.num_workers=0"]


@pytest.fixture(scope="session")
def main_run(ray_session, tmp_path_factory) -> tuple[Path, dict]:
    """The main job on its small setting: its output folder and summary. Tests read it, never change it."""
    from fmgnn.config import load_config
    from pipelines.main import MainJobConfig, run_main

    out = tmp_path_factory.mktemp("main") / "run"
    config = load_config(MainJobConfig, REPO / "configs/main.yaml", [f"out_dir={out}", *MAIN_JOB_SMALL])
    return out, run_main(config)
