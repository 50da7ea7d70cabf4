"""``fmgnn pretrain`` then ``fmgnn train fimp`` under Ray Train, on a small synthetic cohort with time series."""

from __future__ import annotations

import json

import pytest

from fmgnn.config import load_config
from pipelines.fimp import FIMPJobConfig, run_fimp, split_scans
from pipelines.pretrain import PretrainConfig, run_pretrain

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SHAPE = ["fmri.window=10", "fmri.n_windows=4", "fmri.k=4"]
FOUNDATION = "{hidden: 32, heads: 4, layers: 1, intermediate: 64}"


def test_split_scans_is_a_partition_fixed_by_the_seed():
    train, val, test = split_scans(20, 0, 0.15, 0.15)
    assert sorted(train + val + test) == list(range(20)) and len(test) == 3 and len(val) == 3
    assert split_scans(20, 0, 0.15, 0.15) == (train, val, test) and split_scans(20, 1, 0.15, 0.15) != (train, val, test)


def test_pretrain_then_fimp_from_pretrained_weights_against_baselines(small_synthetic, ray_session, tmp_path):
    pretrained = run_pretrain(load_config(PretrainConfig, None, [
        f"cohort={small_synthetic}", f"output={tmp_path / 'fm'}", *SHAPE, f"foundation={FOUNDATION}",
        "optim.epochs=2", "ray.num_workers=1", "ray.cpus_per_worker=0.5"]))
    assert (tmp_path / "fm" / "config.json").is_file() and (tmp_path / "fm" / "fimp_tokens.safetensors").is_file()
    assert pretrained["epochs"] == 2

    overrides = [f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", f"pretrained={tmp_path / 'fm'}",
                 "models=[fimp,fimp_pretrained,mlp,gin]", "seeds=[0]", *SHAPE, f"model.foundation={FOUNDATION}",
                 "model.gnn_hidden=32", "optim.epochs=2", "ray.num_workers=2", "ray.cpus_per_worker=0.5"]
    summary = run_fimp(load_config(FIMPJobConfig, None, overrides))
    assert set(summary["models"]) == {"fimp", "fimp_pretrained", "mlp", "gin"}
    assert summary["fimp_vs_best_baseline"]["baseline"] in {"mlp", "gin"}
    result = json.loads((tmp_path / "run" / "fimp_pretrained" / "seed0.json").read_text())
    assert len(result["history"]) == 2 and result["n_test"] == 9
    assert (tmp_path / "run" / "plots" / "reconstruction.png").is_file()

    before = (tmp_path / "run" / "gin" / "seed0.json").stat().st_mtime
    run_fimp(load_config(FIMPJobConfig, None, overrides))  # a rerun trains nothing
    assert (tmp_path / "run" / "gin" / "seed0.json").stat().st_mtime == before
