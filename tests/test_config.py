from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from fmgnn.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    width: int = 8
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  width: 16\n")
    cfg = load_config(Outer, path, ["inner.rate=1", "tags=[p, q]", "maybe=3"])
    assert cfg == Outer(name="y", tags=["p", "q"], inner=Inner(width=16, rate=1.0), maybe=3)
    assert isinstance(cfg.inner.rate, float)


def test_unknown_key_names_the_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key inner.widht"):
        load_config(Outer, None, ["inner.widht=3"])


def test_wrong_type_and_choice_are_errors():
    with pytest.raises(ConfigError, match="inner.width: expected int, received 'wide'"):
        load_config(Outer, None, ["inner.width=wide"])
    with pytest.raises(ConfigError, match=r"inner.mode: expected one of \['a', 'b'\]"):
        load_config(Outer, None, ["inner.mode=c"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Outer, None, ["inner.width"])


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.width=5", "tags=[a]"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


def test_shipped_configs_load():
    from pipelines.augment import AugmentConfig
    from pipelines.bleg import BLEGJobConfig
    from pipelines.fimp import FIMPJobConfig
    from pipelines.main import MainJobConfig
    from pipelines.pretrain import PretrainConfig
    from pipelines.train import BaselineJobConfig
    from pipelines.tune import TuneJobConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    classes = {"main": MainJobConfig, "baseline": BaselineJobConfig, "augment": AugmentConfig, "bleg": BLEGJobConfig,
               "tune_bleg": TuneJobConfig, "pretrain": PretrainConfig, "fimp_fmri": FIMPJobConfig,
               "fimp_genes": FIMPJobConfig, "fimp_images": FIMPJobConfig,
               "fimp_recording": FIMPJobConfig}
    assert sorted(p.stem for p in configs.glob("*.yaml")) == sorted(classes)
    loaded = {name: load_config(cls, configs / f"{name}.yaml") for name, cls in classes.items()}
    assert loaded["main"].bleg.folds.n_folds == 3 and loaded["main"].augment.engine.kind == "auto"
    assert loaded["main"].tune.space["stage3.epochs"] == 30
    assert loaded["baseline"].folds.n_folds == 10 and loaded["baseline"].graph.density == 0.12


def test_floats_written_without_a_dot_and_typed_value_updates():
    from fmgnn.config import with_values

    @dataclass
    class Inner:
        lr: float = 0.1

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        name: str = "a"

    assert load_config(Outer, None, ["inner.lr=1e-4"]).inner.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(ConfigError, match="inner.lr: expected float, received 'fast'"):
        load_config(Outer, None, ["inner.lr=fast"])
    updated = with_values(Outer(), {"inner.lr": 1e-6, "name": "b"})
    assert updated == Outer(Inner(1e-6), "b")
    with pytest.raises(ConfigError):
        with_values(Outer(), {"inner.lr": "slow"})


def test_override_below_a_mapping_field_is_one_entry():
    from pipelines.main import MainJobConfig
    from pipelines.tune import TuneJobConfig

    config = load_config(TuneJobConfig, None, ["space.stage3.lr={choice: [0.1, 0.01]}", "space.stage3.epochs=4"])
    assert config.space == {"stage3.lr": {"choice": [0.1, 0.01]}, "stage3.epochs": 4}
    nested = load_config(MainJobConfig, None, ["tune.space.stage3.epochs=4", "bleg.stage3.epochs=7"])
    assert nested.tune.space == {"stage3.epochs": 4} and nested.bleg.stage3.epochs == 7
    with pytest.raises(ValueError, match="only stage3"):
        load_config(TuneJobConfig, None, ["space.stage2.lr=0.1"])


def test_the_main_job_refuses_a_setting_it_would_overwrite_before_writing_anything(tmp_path):
    from fmgnn.errors import InputError
    from pipelines.main import MainJobConfig, run_main

    config = load_config(MainJobConfig, Path(__file__).resolve().parents[1] / "configs" / "main.yaml",
                         [f"out_dir={tmp_path / 'main'}", "fimp.fmri.window=7"])
    with pytest.raises(InputError, match=r"fimp.fmri.window=7: the main job sets it to 20 .*pretrain.fmri.window"):
        run_main(config)
    assert not (tmp_path / "main").exists()


def test_a_union_field_takes_the_first_type_that_fits():
    from fmgnn.config import ConfigError, config_from_dict
    from fmgnn.sources.braingb import BrainGBConfig

    assert config_from_dict(BrainGBConfig, {}, []).atlas_regions is None
    assert config_from_dict(BrainGBConfig, {}, ["atlas_regions=[CER,DMN]"]).atlas_regions == ["CER", "DMN"]
    assert config_from_dict(BrainGBConfig, {}, ["atlas_regions=labels.tsv"]).atlas_regions == "labels.tsv"
    with pytest.raises(ConfigError, match=r"atlas_regions: expected list\[str\] \| str \| None, received 3"):
        config_from_dict(BrainGBConfig, {}, ["atlas_regions=3"])
