"""``fmgnn pretrain`` then ``fmgnn train fimp`` under Ray Train, on a small synthetic cohort with time series."""

from __future__ import annotations

import json

import pytest

from fmgnn.config import load_config
from fmgnn.errors import InputError
from pipelines.fimp import FIMPJobConfig, run_fimp, split_scans
from pipelines.pretrain import PretrainConfig, run_pretrain

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SHAPE = ["fmri.window=10", "fmri.n_windows=4", "fmri.k=4"]
FOUNDATION = "{hidden: 32, heads: 4, layers: 1, intermediate: 64}"


def test_split_scans_is_a_partition_fixed_by_the_seed_and_keeps_subjects_together():
    ids = [f"sub-{i:02d}" for i in range(20)]
    train, val, test = split_scans(ids, 0, 0.15, 0.15)
    assert sorted(train + val + test) == list(range(20)) and len(test) == 3 and len(val) == 3
    assert split_scans(ids, 0, 0.15, 0.15) == (train, val, test)
    assert split_scans(ids, 1, 0.15, 0.15) != (train, val, test)
    runs = [f"sub-{i // 3:02d}" for i in range(60)]  # three runs per subject
    for seed in range(5):
        parts = split_scans(runs, seed, 0.15, 0.15)
        assert sorted(sum(parts, [])) == list(range(60))
        sides = [{runs[i] for i in part} for part in parts]
        assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]


def test_pretrain_then_fimp_from_pretrained_weights_against_baselines(small_synthetic, ray_session, tmp_path):
    pretrained = run_pretrain(load_config(PretrainConfig, None, [
        f"corpus=[{small_synthetic}]", f"output={tmp_path / 'fm'}", *SHAPE, f"foundation={FOUNDATION}",
        "optim.epochs=2", "ray.num_workers=1", "ray.cpus_per_worker=0.5"]))
    assert (tmp_path / "fm" / "config.json").is_file() and (tmp_path / "fm" / "fimp_tokens.safetensors").is_file()
    assert pretrained["epochs"] == 2

    overrides = [f"cohort={small_synthetic}", f"run_dir={tmp_path / 'run'}", f"pretrained={tmp_path / 'fm'}",
                 "models=[fimp,fimp_pretrained,foundation,foundation_pretrained,mlp,gin]", "seeds=[0]", *SHAPE,
                 f"model.foundation={FOUNDATION}",
                 "model.gnn_hidden=32", "optim.epochs=2", "ray.num_workers=2", "ray.cpus_per_worker=0.5",
                 "ray.max_concurrent_runs=1"]  # one worker group for the six models
    with pytest.raises(InputError, match="pretrained on windows of 10 values, this task's have 5"):
        run_fimp(load_config(FIMPJobConfig, None, [*overrides, "fmri.window=5", "fmri.n_windows=8"]))
    summary = run_fimp(load_config(FIMPJobConfig, None, overrides))
    assert set(summary["models"]) == {"fimp", "fimp_pretrained", "foundation", "foundation_pretrained", "mlp", "gin"}
    assert summary["fimp_vs_best_baseline"]["baseline"] == \
        max(["foundation", "mlp", "gin"], key=lambda m: summary["models"][m]["r2"]["mean"])
    for model in ("fimp", "foundation"):  # what the pretrained weights give, paired with the same model from random
        gain = summary[f"{model}_pretrained_vs_random_weights"]
        assert gain["baseline"] == model and gain["r2"]["differences"] == pytest.approx(
            [summary["models"][f"{model}_pretrained"]["r2"]["mean"] - summary["models"][model]["r2"]["mean"]])
    result = json.loads((tmp_path / "run" / "fimp_pretrained" / "seed0.json").read_text())
    assert len(result["history"]) == 2 and result["n_test"] == 9
    baseline = json.loads((tmp_path / "run" / summary["fimp_pretrained_vs_best_baseline"]["baseline"] /
                           "seed0.json").read_text())
    paired = summary["fimp_pretrained_vs_best_baseline"]["r2"]  # paired over seeds: here one
    assert paired["differences"] == pytest.approx([result["r2"] - baseline["r2"]]) and paired["n_splits"] == 1
    assert (tmp_path / "run" / "plots" / "reconstruction.png").is_file()

    before = (tmp_path / "run" / "gin" / "seed0" / "result.json").stat().st_mtime
    run_fimp(load_config(FIMPJobConfig, None, overrides))  # a rerun trains nothing
    assert (tmp_path / "run" / "gin" / "seed0" / "result.json").stat().st_mtime == before


def test_images_task_under_ray_train_with_fimp_from_the_foundation_baseline(ray_session, tmp_path):
    """The one-graph path: 2 DDP workers over target-node batches; FIMP-pretrained waits for and starts
    from the same seed's foundation baseline."""
    overrides = ["task=images", "images.limit=240", f"run_dir={tmp_path / 'digits'}", "pretrained=foundation",
                 "models=[fimp_pretrained,foundation,gcn,mlp]", "seeds=[0]", f"model.foundation={FOUNDATION}",
                 "model.gnn_hidden=32", "optim.epochs=2", "optim.batch_size=64", "ray.num_workers=2",
                 "ray.cpus_per_worker=0.5", "ray.max_concurrent_runs=1"]
    summary = run_fimp(load_config(FIMPJobConfig, None, overrides))
    assert summary["task"] == "images" and set(summary["models"]) == {"fimp_pretrained", "foundation", "gcn", "mlp"}
    assert summary["fimp_pretrained_vs_best_baseline"]["baseline"] == \
        max(["foundation", "gcn", "mlp"], key=lambda m: summary["models"][m]["r2"]["mean"])
    # The token model against the MLP on the same tokens, paired on the seed's split and masks.
    token_check = summary["foundation_vs_mlp"]["r2"]
    assert token_check["differences"] == pytest.approx(
        [summary["models"]["foundation"]["r2"]["mean"] - summary["models"]["mlp"]["r2"]["mean"]])
    run = tmp_path / "digits"
    result = json.loads((run / "fimp_pretrained" / "seed0.json").read_text())
    assert result["n_test"] == 36 and len(result["history"]) == 2 and 0 < result["mse"] < 1
    assert 0 < result["history"][0]["seconds"] <= result["history"][1]["seconds"]  # per epoch, for equal time
    versus = summary["fimp_pretrained_vs_best_baseline"]
    assert set(versus["equal_time"]["per_split"]) == {"fimp_pretrained", versus["baseline"]}
    # The foundation baseline finished before FIMP-pretrained started from it.
    finished = {m: (run / m / "seed0" / "result.json").stat().st_mtime for m in ("foundation", "fimp_pretrained")}
    assert finished["foundation"] < finished["fimp_pretrained"]
    assert (run / "plots" / "reconstruction.png").is_file()


def test_fimp_from_the_foundation_baseline_copies_its_layers_into_every_fimp_layer(tmp_path):
    import torch

    from fimp.foundation import FoundationConfig
    from fimp.reconstruction import ReconstructionConfig, build_model
    from pipelines.fimp import from_foundation_baseline

    shape = {"n_tokens": 4, "token_values": 3, "foundation": FoundationConfig(hidden=16, heads=2, layers=1,
                                                                                 intermediate=32)}
    foundation = build_model(ReconstructionConfig(kind="foundation", **shape))
    torch.save(foundation.state_dict(), tmp_path / "model.pt")
    state = from_foundation_baseline(tmp_path / "model.pt", ReconstructionConfig(kind="fimp", fimp_layers=2, **shape))
    fimp = build_model(ReconstructionConfig(kind="fimp", fimp_layers=2, **shape))
    fimp.load_state_dict(state)
    for key, value in foundation.state_dict().items():
        if key.startswith("convs.0."):
            for layer in (0, 1):
                assert torch.equal(fimp.state_dict()[key.replace("convs.0.", f"convs.{layer}.")], value)
        else:
            assert torch.equal(fimp.state_dict()[key], value)


def test_equal_time_takes_the_models_best_validation_within_the_references_seconds():
    from pipelines.fimp import at_equal_time

    def run(seconds, val_r2, per_epoch=None):
        history = [{"val_r2": v, **({"seconds": s} if per_epoch else {})} for v, s in zip(val_r2, per_epoch or val_r2)]
        return {"seconds": seconds, "history": history}

    runs = {"fimp": {"seed0": run(12, [0.3, 0.6, 0.9], per_epoch=[4, 8, 12]),
                     "seed1": run(12, [0.2, 0.7, 0.8]),  # recorded without per-epoch seconds: 4 s an epoch
                     "seed2": run(40, [0.9], per_epoch=[40])},  # its first epoch outlasts the reference's run
            "gcn": {"seed0": run(10, [0.5, 0.8]), "seed1": run(9, [0.75]), "seed2": run(5, [0.7])}}
    result = at_equal_time("fimp", "gcn", runs, 0.2)
    assert [result["per_split"]["fimp"][s]["val_r2"] for s in ("seed0", "seed1", "seed2")] == [0.6, 0.7, None]
    assert result["per_split"]["fimp"]["seed1"]["epochs"] == 2
    assert result["val_r2"]["splits"] == ["seed0", "seed1"]
    assert result["val_r2"]["differences"] == pytest.approx([0.6 - 0.8, 0.7 - 0.75])
    from pipelines.fimp import equal_time_line

    assert "1 of 3 seeds finished no epoch" in equal_time_line("fimp", "gcn", result)
    only_seed2 = {model: {"seed2": runs[model]["seed2"]} for model in ("fimp", "gcn")}
    none = at_equal_time("fimp", "gcn", only_seed2, 0.2)
    assert "val_r2" not in none and "no epoch within it on any seed" in equal_time_line("fimp", "gcn", none)
