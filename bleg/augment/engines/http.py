"""An OpenAI-compatible chat-completions endpoint (a vLLM server the user already runs, say).

Requests run with bounded concurrency; a failed request (connection error, 429 or 5xx) is retried
with backoff. An endpoint that cannot be reached at all fails once, at start, with one clear error.
With ``guided_json`` the request carries ``response_format`` with the answer schema (vLLM's
server honours it; others may ignore it, and validation still applies).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bleg.augment.answer import ANSWER_SCHEMA
from bleg.augment.engines.base import EngineConfig, Generation, Request, attempt_temperature
from fmgnn.cohort import CohortError

RETRY_STATUS = {429, 500, 502, 503, 504}


class EndpointError(CohortError):
    """The endpoint cannot be used at all."""


class HttpEngine:
    def __init__(self, config: EngineConfig, retries: int = 3, backoff_s: float = 0.5) -> None:
        self.config = config
        self.base = config.url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        try:  # one probe, so a wrong URL is one error instead of a retry storm per subject
            self._call("GET", "/models", None, timeout=10)
        except (urllib.error.URLError, OSError) as err:
            raise EndpointError(f"engine.url: cannot reach {self.base}/models ({err})") from None

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # for shortening only; rows record the server's own counts

    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.config.api_key:
            request.add_header("Authorization", f"Bearer {self.config.api_key}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def _one(self, request: Request) -> Generation:
        sampling = self.config.sampling
        body = {
            "model": self.config.model,
            "messages": [{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
            "temperature": attempt_temperature(sampling, request.seed), "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": request.seed,
        }
        if self.config.guided_json:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
        start = time.perf_counter()
        last_error = ""
        for attempt in range(self.retries + 1):
            try:
                reply = self._call("POST", "/chat/completions", body, self.config.request_timeout_s)
                usage = reply.get("usage") or {}
                return Generation(reply["choices"][0]["message"]["content"] or "", int(usage.get("prompt_tokens", 0)),
                                  int(usage.get("completion_tokens", 0)), time.perf_counter() - start)
            except urllib.error.HTTPError as err:
                last_error = f"HTTP {err.code}: {err.read()[:200].decode(errors='replace')}"
                if err.code not in RETRY_STATUS:
                    break
            except (urllib.error.URLError, OSError, KeyError, json.JSONDecodeError) as err:
                last_error = f"{err.__class__.__name__}: {err}"
            time.sleep(self.backoff_s * 2**attempt)
        return Generation("", 0, 0, time.perf_counter() - start, error=last_error)

    def generate(self, requests: list[Request]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.config.max_concurrent_requests) as pool:
            return list(pool.map(self._one, requests))
