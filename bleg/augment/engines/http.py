"""An OpenAI-compatible chat-completions endpoint (a vLLM server the user already runs, say).

Requests go through the ``openai`` client, which retries connection errors, 408, 429 and 5xx with
exponential backoff and applies the timeout; requests run with bounded concurrency. An endpoint that
cannot be reached at all fails once, at start, with one clear error. With ``guided_json`` the request
carries ``response_format`` with the answer schema (vLLM's server honours it; others may ignore it, and
validation still applies).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from openai import APIConnectionError, APIError, OpenAI

from bleg.augment.answer import ANSWER_SCHEMA
from bleg.augment.engines.base import EngineConfig, Generation, Request, attempt_temperature
from fmgnn.cohort import CohortError


class EndpointError(CohortError):
    """The endpoint cannot be used at all."""


class HttpEngine:
    def __init__(self, config: EngineConfig, retries: int = 3) -> None:
        self.config = config
        self.client = OpenAI(base_url=config.url, api_key=config.api_key or "unused",
                             timeout=config.request_timeout_s, max_retries=retries)
        try:  # one probe, so a wrong URL is one error instead of a retry storm per subject
            self.client.with_options(timeout=10, max_retries=0).models.list()
        except APIConnectionError as err:
            raise EndpointError(f"engine.url: cannot reach {config.url.rstrip('/')}/models ({err})") from None

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # for shortening only; rows record the server's own counts

    def _one(self, request: Request) -> Generation:
        sampling = self.config.sampling
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}} \
            if self.config.guided_json else {}
        start = time.perf_counter()
        try:
            reply = self.client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
                temperature=attempt_temperature(sampling, request.seed), top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, seed=request.seed, **extra)
        except APIError as err:  # after the client's own retries
            return Generation("", 0, 0, time.perf_counter() - start, error=f"{err.__class__.__name__}: {err}")
        usage = reply.usage
        return Generation(reply.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, time.perf_counter() - start)

    def generate(self, requests: list[Request]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.config.max_concurrent_requests) as pool:
            return list(pool.map(self._one, requests))
