"""LLM engines behind one interface; ``build_engine`` picks one from an ``EngineConfig``."""

from __future__ import annotations

from bleg.augment.engines.base import Engine, EngineConfig, Generation, Request, SamplingConfig


def build_engine(config: EngineConfig) -> Engine:
    if config.kind == "rules":
        from bleg.augment.engines.rules import RulesEngine

        return RulesEngine(config)
    if config.kind == "transformers":
        from bleg.augment.engines.hf import TransformersEngine

        return TransformersEngine(config)
    if config.kind == "http":
        from bleg.augment.engines.http import HttpEngine

        return HttpEngine(config)
    raise ValueError(f"engine.kind {config.kind!r} has no in-process engine (vllm runs as a Ray Data processor)")


def preflight(config: EngineConfig) -> None:
    """Cheap checks in the driver, so that a bad endpoint or model path fails once, clearly."""
    if config.kind == "http":
        from bleg.augment.engines.http import HttpEngine

        HttpEngine(config)  # probes GET /models
    elif config.kind in ("transformers", "vllm"):
        from bleg.augment.engines.hf import check_model

        check_model(config)


__all__ = ["Engine", "EngineConfig", "Generation", "Request", "SamplingConfig", "build_engine", "preflight"]
