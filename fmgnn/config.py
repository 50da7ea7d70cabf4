"""Typed configs: dataclasses loaded from YAML, overridden with dotted ``key=value`` pairs.

A config class is a plain ``@dataclass`` whose fields may be other dataclasses. Loading
checks every key against the class, so a typo fails with the full dotted path instead of
being ignored::

    cfg = load_config(BaselineConfig, "configs/baseline.yaml", ["gcn.hidden=64", "folds.n_folds=5"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from fmgnn.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config key or value that does not fit its dataclass."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting where it is unambiguous."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) in (typing.Union, types.UnionType):  # X | Y (| None): the first that fits
        args = typing.get_args(inner)
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {inner}, received {value!r}")
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{path}: expected {tp}, received null")
    tp = inner
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, received {value!r}")
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, received {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, received {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, received {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; for a float field it can only mean the number.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path}: expected float, received {value!r}") from None
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{path}: expected {tp.__name__}, received {value!r}")
        return value
    return value


def _build(cls: type[T], values: dict[str, Any], path: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; {cls.__name__} has: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field left out
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, cls: Any = None) -> None:
    """Set ``a.b.c`` in a config tree. Below a mapping field (``dict[str, ...]``) the rest of the key is
    one entry: ``tune.space.stage3.lr=...`` sets the entry ``stage3.lr`` of ``space``."""
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        hint = typing.get_type_hints(cls).get(key) if dataclasses.is_dataclass(cls) else None
        if typing.get_origin(hint) is dict:
            node.setdefault(key, {})[".".join(keys[i + 1:])] = value
            return
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node, cls = child, hint
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=3", "c=[1, 2]"]`` -> ``[("a.b", 3), ("c", [1, 2])]``; values are parsed as YAML."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def with_values(cfg: T, values: dict[str, Any]) -> T:
    """A copy of ``cfg`` with dotted keys set to values (already typed: no YAML parsing)."""
    tree = to_dict(cfg)
    for key, value in values.items():
        _set_dotted(tree, key, value, type(cfg))
    return _build(type(cfg), tree)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain Python data (what YAML and JSON can hold)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], values: dict[str, Any], overrides: list[str] | None = None) -> T:
    """Build ``cls`` from nested plain data, with dotted overrides applied on top."""
    tree = to_dict(cls()) if not values else _merge(to_dict(cls()), values)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value, cls)
    return _build(cls, tree)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, found {type(loaded).__name__}")
        values = loaded
    try:
        return config_from_dict(cls, values, overrides)
    except ConfigError as err:
        where = f" (from {path})" if path is not None else ""
        raise ConfigError(f"{err}{where}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML; ``load_config`` reads it back unchanged."""
    from fmgnn.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Settings that name files. A job's driver makes every such value absolute when it loads the config
# (``resolve_paths``), before anything reaches Ray: Ray Train V2 runs each worker in a working directory of
# its own, so a relative path read or written there is not the user's path.
LOCAL_PATH = "local path"  # a file or folder; URIs (s3://...) and pkg:// stay as given
MODEL_PATH = "model path"  # a local folder or file, or a hub id / keyword, which stays as given

LocalPath = Annotated[str, LOCAL_PATH]
OptionalLocalPath = Annotated[str | None, LOCAL_PATH]
ModelPath = Annotated[str, MODEL_PATH]
OptionalModelPath = Annotated[str | None, MODEL_PATH]
PathOrKeyword = Annotated[str, MODEL_PATH]  # a data source: a local path, a URI, or a keyword (``synthetic``)


def resolve_path(value: str, kind: str, base: Path) -> str:
    """``value`` made absolute against ``base`` where it is a local path (see ``LOCAL_PATH``, ``MODEL_PATH``).

    A model setting is a local path when it is spelled as one (``/``, ``./``, ``../``, ``~``) or names a file
    or folder that exists; otherwise it is a hub id (``microsoft/biogpt``) or a keyword and stays as given.
    """
    if not value or "://" in value:
        return value
    path = Path(value).expanduser()
    if kind == MODEL_PATH and not (value.startswith(("/", "./", "../", "~")) or (base / path).exists()):
        return value
    return os.path.normpath(base / path)


def resolve_paths(cfg: T, base: str | Path | None = None) -> T:
    """Every path setting of ``cfg`` (and of its nested configs) made absolute against ``base`` (default:
    the working directory), in place; ``cfg`` is returned. Resolving twice changes nothing."""
    base = Path(base or os.getcwd())
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints.get(f.name)
        if dataclasses.is_dataclass(value):
            resolve_paths(value, base)
        elif isinstance(value, str) and typing.get_origin(hint) is Annotated:
            kinds = [m for m in hint.__metadata__ if m in (LOCAL_PATH, MODEL_PATH)]
            if kinds:
                setattr(cfg, f.name, resolve_path(value, kinds[0], base))
        elif isinstance(value, list) and typing.get_origin(hint) is list:  # list[LocalPath] and the like
            (item,) = typing.get_args(hint)
            kinds = [m for m in getattr(item, "__metadata__", ()) if m in (LOCAL_PATH, MODEL_PATH)]
            if kinds:
                setattr(cfg, f.name, [resolve_path(v, kinds[0], base) for v in value])
    return cfg
