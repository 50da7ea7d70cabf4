"""The engine interface and its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fmgnn.config import ModelPath


@dataclass
class SamplingConfig:
    """Args:
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass.
        max_tokens: Most tokens generated per answer.
        repetition_penalty: Above 1 discourages loops (small models repeat themselves in JSON lists).
        seed: Sampling seed (retries add the attempt number).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    repetition_penalty: float = 1.1
    seed: int = 0


@dataclass
class EngineConfig:
    """Args:
        kind: ``rules`` (no model), ``transformers``, ``http`` (OpenAI-compatible server), ``vllm``, or
            ``auto``: ``transformers`` with ``model`` (default SmolLM2-135M-Instruct) when that model's
            package is installed, else ``rules``.
        model: Hub id, local folder, or a folder holding ``gguf_file``; the model name for ``http``.
        gguf_file: GGUF file name inside ``model`` (transformers dequantises it).
        url: Base URL of the OpenAI-compatible API for ``http`` (``.../v1``).
        api_key: Bearer token for ``http``, if the server wants one.
        max_model_len: Context length; prompts are shortened to fit it with ``max_tokens``.
        batch_size: Prompts per generation call (and per Ray Data batch).
        concurrency: Engine replicas (Ray Data actors; GPUs for vllm). The rules engine loads no model
            and runs as Ray Data tasks instead, as many at once as there are CPUs.
        num_gpus: GPUs per replica for ``transformers``.
        num_cpus: CPUs per replica for ``transformers`` (per task for ``rules``); Ray sets the replica's torch
            threads to it (a CPU-only model with 1 CPU runs on 1 thread).
        tensor_parallel_size: vLLM tensor parallelism per replica.
        accelerator_type: Ray accelerator type for vLLM replicas (``A10G``, ``H100``...).
        guided_json: Constrain decoding to the answer schema where the engine supports it.
        prefix_cache: ``transformers``: prefill what every prompt begins with once per engine and decode a
            batch's answers together from copies of that KV cache, one prefill per answer (both guided
            parts); false: batched ``generate`` calls, two full prefills per guided answer.
        max_attempts: Generations per subject before an invalid answer is kept as an error row.
        max_concurrent_requests: In-flight HTTP requests per replica.
        request_timeout_s: HTTP timeout per request.
        device: ``cpu``, ``cuda`` or ``auto`` for ``transformers``; ``cpu`` runs vLLM's CPU build.
        chat_template: Apply the tokenizer's chat template (vLLM); off for a model without one.
        vllm_engine_kwargs: Extra ``vllm.LLM`` arguments (``dtype``, ``gpu_memory_utilization``...).
        log_engine_metrics: Export vLLM engine metrics to Ray's Prometheus endpoint (needs ``ray[serve]``).
        node_resource: vLLM: a custom resource that the nodes running the vLLM image advertise (``vllm_node``
            in cluster/), so that replicas land there; None: anywhere. Other engines run on the job's own
            nodes (``ray.node_resource``).
        sampling: Sampling parameters.
    """

    kind: Literal["auto", "rules", "transformers", "http", "vllm"] = "rules"
    model: ModelPath = ""
    gguf_file: str | None = None
    url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    max_model_len: int = 2048
    batch_size: int = 16
    concurrency: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    tensor_parallel_size: int = 1
    accelerator_type: str | None = None
    guided_json: bool = True
    prefix_cache: bool = True
    max_attempts: int = 3
    max_concurrent_requests: int = 8
    request_timeout_s: float = 120.0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    chat_template: bool = True
    vllm_engine_kwargs: dict[str, Any] = field(default_factory=dict)
    log_engine_metrics: bool = False
    node_resource: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @property
    def model_id(self) -> str:
        """What the output rows name as the model (the resume key uses it)."""
        if self.kind == "rules":
            return "rules"
        return f"{self.model}/{self.gguf_file}" if self.gguf_file else self.model


# How the engine is scaled, batched and reached, not what it answers: free to change when an augmentation
# output folder is rerun (``pipelines.augment.AugmentJob``). The prefix cache is tested to give the batched
# path's answers.
ENGINE_RUNTIME_SETTINGS = ("url", "api_key", "batch_size", "concurrency", "num_gpus", "num_cpus",
                           "tensor_parallel_size", "accelerator_type", "prefix_cache", "max_attempts",
                           "max_concurrent_requests", "request_timeout_s", "device", "log_engine_metrics",
                           "node_resource")


RETRY_TEMPERATURE = 0.7


def attempt_temperature(sampling: SamplingConfig, seed: int) -> float:
    """The temperature of one attempt: a retry (a seed other than the first) samples at least at
    ``RETRY_TEMPERATURE``, because greedy decoding would repeat the rejected answer."""
    return sampling.temperature if seed == sampling.seed else max(sampling.temperature, RETRY_TEMPERATURE)


@dataclass
class Request:
    """One subject's generation request: the chat messages, and the description for the rules engine."""

    system: str
    prompt: str
    description: dict[str, Any]
    seed: int = 0


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float
    error: str | None = None  # the engine failed (as opposed to an invalid answer)


class Engine(Protocol):
    config: EngineConfig

    def count_tokens(self, text: str) -> int: ...

    def generate(self, requests: list[Request]) -> list[Generation]: ...
