"""``fmgnn augment``: LLM descriptions of every subject's brain graph, as a streaming Ray Data pipeline.

    python -m pipelines.augment cohort=cohorts/nmda_aal.parquet output=runs/augment/nmda
    python -m pipelines.augment --config configs/augment.yaml engine.kind=transformers engine.model=PATH
    ray job submit --working-dir . -- python -m pipelines.augment cohort=/mnt/shared/c.parquet output=/mnt/shared/aug

read cohort Parquet (no label column) -> describe (graph measures) -> prompt + LLM (+ bounded retries)
-> parse and validate -> Parquet part files in ``output/parts/``, written atomically by this driver.
A rerun skips subjects already answered for the same prompt version and model; ``retry_failed=true``
also redoes the subjects whose answers were invalid. One run writes to an output folder at a time.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from bleg.augment.describe import DescribeConfig
from bleg.augment.engines import EngineConfig
from bleg.augment.prompt import PROMPT_VERSION
from bleg.augment.stages import INPUT_COLUMNS, GenerateStage, describe_stage, parse_stage
from bleg.augment.engines import preflight
from bleg.augment.store import PartWriter, drop_replaced_rows, read_keys
from fmgnn.cohort import Cohort
from fmgnn.config import load_config, save_config
from fmgnn.io import atomic_write_json, environment_record
from pipelines.errors import exit_on_input_error
from pipelines.ray_session import RayConfig, start_ray

log = logging.getLogger("fmgnn.augment")


@dataclass
class AugmentConfig:
    """Args:
        cohort: Cohort Parquet file.
        output: Output folder (part files under ``parts/``, run records beside them).
        retry_failed: Redo subjects whose earlier answers were invalid.
        limit: Only the first N subjects still to do (None: all).
        rows_per_part: Rows per output part file (what a kill can lose at most).
        describe_batch_size: Subjects per graph-measure batch.
    """

    cohort: str = ""
    output: str = "runs/augment"
    retry_failed: bool = False
    limit: int | None = None
    rows_per_part: int = 256
    describe_batch_size: int = 64
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def subjects_to_do(cohort: Cohort, skip: set[str], limit: int | None) -> set[str]:
    ids = [s for s in cohort.subject_ids().tolist() if s not in skip]
    return set(ids[:limit] if limit is not None else ids)


def build_dataset(config: AugmentConfig, cohort: Cohort, todo: set[str]) -> ray.data.Dataset:
    """The lazy pipeline over the subjects in ``todo``. The label column is never read."""
    columns = [c for c in INPUT_COLUMNS if c in cohort.schema.names]
    ds = ray.data.read_parquet(str(cohort.path), columns=columns)
    ds = ds.filter(lambda row: row["subject_id"] in todo)
    ds = ds.map_batches(describe_stage, batch_size=config.describe_batch_size, batch_format="numpy",
                        fn_kwargs={"metadata": cohort.metadata, "config": config.describe})
    engine = config.engine
    # Resources are set here, where the stage is placed: one engine per actor replica.
    ds = ds.map_batches(GenerateStage, batch_size=engine.batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"engine": engine, "metadata": cohort.metadata},
                        concurrency=engine.concurrency, num_gpus=engine.num_gpus or None)
    return ds.map_batches(parse_stage, batch_format="numpy")


def run_augment(config: AugmentConfig) -> dict[str, Any]:
    if not config.cohort:
        raise ValueError("cohort: give the cohort Parquet file (cohort=path/to/cohort.parquet)")
    if config.engine.kind == "vllm":
        raise ValueError("engine.kind=vllm: the vLLM processor is not wired into this pipeline yet; "
                         "use engine.kind=http against a vLLM server, or transformers")
    cohort = Cohort(config.cohort)
    output = Path(config.output)
    parts = output / "parts"
    model = config.engine.model_id
    done, failed = read_keys(parts, PROMPT_VERSION, model)
    skip = done if config.retry_failed else done | failed
    todo = subjects_to_do(cohort, skip, config.limit)
    n_todo = len(todo)
    writer = PartWriter(parts)
    save_config(config, output / f"config-{writer.run_id}.yaml")
    atomic_write_json(output / f"versions-{writer.run_id}.json", environment_record())
    log.info("augment %s with %s (%s), prompt %s: %d to do, %d already answered, %d failed before%s",
             cohort.metadata.name, config.engine.kind, model, PROMPT_VERSION, n_todo, len(done), len(failed),
             " (retrying them)" if config.retry_failed else " (kept; retry_failed=true redoes them)")
    start = time.monotonic()
    written = errors = tokens_out = 0
    if n_todo:
        preflight(config.engine)  # a wrong URL or model path: one clear error before any worker starts
        start_ray(config.ray)
        dataset = build_dataset(config, cohort, todo)
        for batch in dataset.iter_batches(batch_size=config.rows_per_part, batch_format="pyarrow"):
            writer.write(batch)
            written += batch.num_rows
            errors += batch.num_rows - batch["error"].null_count
            tokens_out += int(np.sum(batch["output_tokens"].to_numpy()))
            elapsed = time.monotonic() - start
            log.info("augment: %d/%d subjects written (%.1f subjects/s, %d errors)", written, n_todo,
                     written / elapsed, errors)
    retried = (failed & todo) if config.retry_failed else set()
    removed = drop_replaced_rows(parts, retried, PROMPT_VERSION, model, writer.run_id)
    seconds = time.monotonic() - start
    summary = {
        "run_id": writer.run_id, "cohort": str(cohort.path), "prompt_version": PROMPT_VERSION, "model": model,
        "engine": config.engine.kind, "subjects_to_do": n_todo, "rows_written": written, "error_rows": errors,
        "skipped_already_answered": len(done), "replaced_rows_removed": removed,
        "seconds": round(seconds, 1), "subjects_per_s": round(written / seconds, 2) if written else 0.0,
        "output_tokens_per_s": round(tokens_out / seconds, 1) if written else 0.0,
    }
    atomic_write_json(output / f"summary-{writer.run_id}.json", summary)
    log.info("augment done: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmgnn augment", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. engine.kind=rules")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return exit_on_input_error("augment", lambda: run_augment(load_config(AugmentConfig, args.config, args.overrides)))


if __name__ == "__main__":
    raise SystemExit(main())
