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
    from pipelines.main import MainJobConfig
    from pipelines.train import BaselineJobConfig

    repo = Path(__file__).resolve().parents[1]
    main = load_config(MainJobConfig, repo / "configs/main.yaml")
    assert main.baseline.folds.n_folds == 5
    baseline = load_config(BaselineJobConfig, repo / "configs/baseline.yaml")
    assert baseline.folds.n_folds == 10 and baseline.graph.density == 0.12


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
