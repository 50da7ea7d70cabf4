"""Shared fixtures: one local Ray instance for the whole suite, real data from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NMDA = SHARED_DATA / "corrpops" / "nmda_aal.npz"


@pytest.fixture(scope="session")
def ray_session():
    """ray.init costs seconds: start it once, with the job settings the pipelines use."""
    import ray

    from pipelines.ray_session import RayConfig, start_ray

    start_ray(RayConfig(num_cpus=8))
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
