"""Generated tokens/s of transformers vs vLLM on the same model and prompts (greedy, no guided decoding).

    .venv-vllm/bin/python bench/augment_engines.py --prompts 64 --max-tokens 32            # tiny local Llama
    .venv-vllm/bin/python bench/augment_engines.py --model /models/Qwen2.5-0.5B-Instruct    # a real model

Runs in the vLLM environment (both libraries there). Prompts are the pipeline's own prompts for
synthetic subjects. vLLM runs in-process, as one replica of the Ray Data processor does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.update({"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CACHE_ROOT": os.path.join(tempfile.gettempdir(), "fmgnn-vllm-cache")})

from bleg.augment.describe import DescribeConfig, describe_batch  # noqa: E402
from bleg.augment.engines import EngineConfig, Request, SamplingConfig  # noqa: E402
from bleg.augment.engines.hf import TransformersEngine  # noqa: E402
from bleg.augment.prompt import SYSTEM, render_prompt  # noqa: E402
from fmgnn.sources.synthetic import SyntheticCohort, SyntheticConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: build the tiny test Llama)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from tests.tiny_models import build_tiny_llama

        model = str(build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama"))
    cohort = SyntheticCohort(SyntheticConfig(n_subjects=args.prompts, store="fc"))
    scans = [cohort.subject(i) for i in range(args.prompts)]
    descriptions = describe_batch(np.stack([s.fc for s in scans]), cohort.metadata(), DescribeConfig())
    prompts = [render_prompt(d, cohort.metadata(), {}) for d in descriptions]
    sampling = SamplingConfig(max_tokens=args.max_tokens, repetition_penalty=1.0)

    hf = TransformersEngine(EngineConfig(kind="transformers", model=model, device="cpu", sampling=sampling))
    start = time.perf_counter()
    hf_out = []
    for i in range(0, len(prompts), 16):
        hf_out += hf.generate([Request(SYSTEM, p, {}) for p in prompts[i:i + 16]])
    hf_s = time.perf_counter() - start
    hf_tokens = sum(g.output_tokens for g in hf_out)

    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=4096,
              distributed_executor_backend="uni")
    load_s = time.perf_counter() - start
    texts = [f"{SYSTEM}\n\n{p}\n\n" for p in prompts]
    start = time.perf_counter()
    outputs = llm.generate(texts, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    vllm_s = time.perf_counter() - start
    vllm_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    same = sum(o.outputs[0].text == g.text for o, g in zip(outputs, hf_out))

    print(f"{'engine':>14} {'prompts':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'transformers':>14} {len(prompts):>8} {hf_tokens:>7} {hf_s:>8.2f} {hf_tokens / hf_s:>9.0f}")
    print(f"{'vllm-cpu':>14} {len(prompts):>8} {vllm_tokens:>7} {vllm_s:>8.2f} {vllm_tokens / vllm_s:>9.0f}"
          f"   (engine load {load_s:.1f} s)")
    print(f"greedy outputs identical: {same}/{len(prompts)}; model {model}")


if __name__ == "__main__":
    main()
