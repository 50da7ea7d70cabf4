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

import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from bleg.augment.describe import INPUT_COLUMNS, DescribeConfig, describe_stage
from bleg.augment.engines import ENGINE_RUNTIME_SETTINGS, EngineConfig, preflight, resolve_auto
from bleg.augment.prompt import DEFAULT_PROMPT, get_prompt
from bleg.augment.quality import QualityConfig
from bleg.augment.stages import GenerateStage, parse_stage
from bleg.augment.cohort_quality import cohort_quality
from bleg.augment.run_record import AugmentOutput
from bleg.augment.store import PartWriter, drop_replaced_rows, read_keys
from fmgnn.cohort import Cohort
from fmgnn.config import LocalPath
from fmgnn.tracking import JobRun, TrackingConfig
from fmgnn.errors import InputError
from fmgnn.io import atomic_write_json
from pipelines.command import job_main
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig, node_resources

log = logging.getLogger("fmgnn.augment")


@dataclass
class AugmentConfig:
    """Args:
        cohort: Cohort Parquet file.
        output: Output folder (part files under ``parts/``, run records beside them).
        retry_failed: Redo subjects whose earlier answers were invalid.
        limit: Only the first N subjects still to do (None: all).
        rows_per_part: Rows per output part file.
        flush_interval_s: Write the rows answered so far at least this often, even when fewer than
            ``rows_per_part``: a slow model on CPU takes minutes per batch, and a kill loses only
            what was not written.
        describe_batch_size: Subjects per graph-measure batch.
        prompt: The prompt version (bleg/augment/prompt.py: ``v1``, ``v2``, ``v3``); rows record its hash.
        quality: Answer checks beyond the JSON shape (bleg/augment/quality.py); a rejected answer is
            retried like an invalid one and kept as an error row, with its reason, if it stays bad.
    """

    cohort: LocalPath = ""
    output: LocalPath = "runs/augment"
    retry_failed: bool = False
    limit: int | None = None
    rows_per_part: int = 256
    flush_interval_s: float = 60.0
    describe_batch_size: int = 64
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    prompt: str = DEFAULT_PROMPT
    quality: QualityConfig = field(default_factory=QualityConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def subjects_to_do(cohort: Cohort, skip: set[str], limit: int | None) -> set[str]:
    ids = [s for s in cohort.scan_ids().tolist() if s not in skip]
    return set(ids[:limit] if limit is not None else ids)


def keep_subjects(batch: pa.Table, subjects: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["scan_id"], pa.array(subjects, pa.string())))


def generate_with_rules(batch: dict[str, Any], **stage: Any) -> pa.Table:
    return GenerateStage(**stage)(batch)


def replica_resources(engine: EngineConfig, ray_config: RayConfig) -> dict[str, Any]:
    """The Ray resources of one engine replica: a vLLM replica holds ``tensor_parallel_size`` GPUs on a node
    that advertises ``engine.node_resource`` (the vLLM image), or one CPU and vLLM's CPU environment on the CPU
    build; a transformers replica what ``num_gpus``/``num_cpus`` ask, on the job's own nodes."""
    if engine.kind != "vllm":
        return {"num_gpus": engine.num_gpus or None, "num_cpus": engine.num_cpus,
                "resources": node_resources(ray_config.node_resource)}
    placed = {"resources": node_resources(engine.node_resource)}
    if engine.device == "cpu":
        from bleg.augment.engines.vllm import CPU_ENV

        return {"num_cpus": 1, "runtime_env": {"env_vars": CPU_ENV}, **placed}
    return {"num_gpus": engine.tensor_parallel_size, "num_cpus": engine.num_cpus, **placed,
            **({"accelerator_type": engine.accelerator_type} if engine.accelerator_type else {})}


def build_dataset(config: AugmentConfig, cohort: Cohort, todo: set[str]) -> ray.data.Dataset:
    """The lazy pipeline over the subjects in ``todo``. The label column is never read."""
    # Version-1 cohorts have no scan_id: their subject_id is the unique row id.
    key = "scan_id" if "scan_id" in cohort.schema.names else "subject_id"
    columns = [key if c == "scan_id" else c for c in INPUT_COLUMNS if c == "scan_id" or c in cohort.schema.names]
    placed = node_resources(config.ray.node_resource)  # the graph code runs on the fmgnn image's nodes only
    ds = ray.data.read_parquet(str(cohort.path), columns=columns)
    if key != "scan_id":
        ds = ds.rename_columns({key: "scan_id"})
    if len(todo) < len(cohort):  # a batch-wise Arrow filter: a row-wise one would build Python lists of FC
        ds = ds.map_batches(keep_subjects, batch_format="pyarrow", fn_kwargs={"subjects": sorted(todo)},
                            resources=placed)
    ds = ds.map_batches(describe_stage, batch_size=config.describe_batch_size, batch_format="numpy",
                        fn_kwargs={"metadata": cohort.metadata, "config": config.describe}, resources=placed)
    engine = config.engine
    if engine.kind == "rules":
        # No model to load: tasks on Ray's warm workers, not an actor pool that starts a process per run.
        ds = ds.map_batches(generate_with_rules, batch_size=engine.batch_size, batch_format="numpy",
                            fn_kwargs={"engine": engine, "metadata": cohort.metadata, "quality": config.quality,
                                       "prompt": config.prompt}, num_cpus=engine.num_cpus, resources=placed)
    else:
        # One block per engine batch: a block leaves its task only when done, so a whole-file block
        # would show no progress (and trip Ray Data's no-progress timeout) until every subject is answered.
        ds = ds.repartition(target_num_rows_per_block=engine.batch_size)
        # Resources are set here, where the stage is placed: one engine per actor replica.
        ds = ds.map_batches(GenerateStage, batch_size=engine.batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"engine": engine, "metadata": cohort.metadata,
                                                   "quality": config.quality, "prompt": config.prompt},
                            concurrency=engine.concurrency, **replica_resources(engine, config.ray))
    return ds.map_batches(parse_stage, batch_format="numpy", fn_kwargs={"quality": config.quality,
                                                                        "prompt": config.prompt}, resources=placed)


@dataclass
class WrittenRows:
    written: int = 0
    errors: int = 0
    output_tokens: int = 0


def write_rows(dataset: ray.data.Dataset, writer: PartWriter, config: AugmentConfig, n_todo: int,
               start: float) -> WrittenRows:
    """Stream the pipeline's rows into part files; only this driver writes, one atomic file at a time.

    Parts hold ``rows_per_part`` rows; rows that wait longer than ``flush_interval_s`` are written anyway.
    """
    result = WrittenRows()

    def emit(batch: pa.Table) -> None:
        writer.write(batch)
        result.written += batch.num_rows
        result.errors += batch.num_rows - batch["error"].null_count
        result.output_tokens += int(pc.sum(batch["output_tokens"]).as_py() or 0)
        log.info("augment: %d/%d subjects written (%.1f subjects/s, %d errors)", result.written, n_todo,
                 result.written / (time.monotonic() - start), result.errors)

    waiting = None
    last_write = time.monotonic()
    blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow")  # each block as soon as it is done
    for block in itertools.chain(blocks, [None]):  # None: the end, write what is left
        if block is not None:
            waiting = block if waiting is None else pa.concat_tables([waiting, block])
        while waiting is not None and waiting.num_rows >= config.rows_per_part:
            emit(waiting.slice(0, config.rows_per_part))
            waiting, last_write = waiting.slice(config.rows_per_part), time.monotonic()
        overdue = time.monotonic() - last_write >= config.flush_interval_s
        if waiting is not None and waiting.num_rows and (block is None or overdue):
            emit(waiting)
            waiting, last_write = None, time.monotonic()
    return result


class AugmentJob(Job[AugmentConfig]):
    """``fmgnn augment`` through the job recipe (``pipelines.job``). Its folder gathers the answers of every
    run with these settings: a rerun adds the subjects still to do."""

    command, tracking_name, config_class = "augment", "augment", AugmentConfig
    # How much is done per run and how the engine is scaled and reached; not what it answers.
    free_settings = (*RUNTIME_SETTINGS, "output", "retry_failed", "limit", "rows_per_part", "flush_interval_s",
                     "describe_batch_size", *(f"engine.{key}" for key in ENGINE_RUNTIME_SETTINGS))
    metrics_file = None  # one summary per run: summary-<run>.json

    def __init__(self, config: AugmentConfig) -> None:
        super().__init__(config)
        self.config.engine = resolve_auto(self.config.engine)  # the kind that runs is the one compared on a rerun
        self.run_id = uuid.uuid4().hex[:10]

    @property
    def folder(self) -> Path:
        return Path(self.config.output)

    def check_inputs(self) -> None:
        config = self.config
        if not config.cohort:
            raise InputError("cohort: give the cohort Parquet file (cohort=path/to/cohort.parquet)")
        self.cohort = Cohort(config.cohort)
        self.done, self.failed = read_keys(AugmentOutput(config.output).parts_dir, get_prompt(config.prompt).version,
                                           config.engine.model_id)
        skip = self.done if config.retry_failed else self.done | self.failed
        self.todo = subjects_to_do(self.cohort, skip, config.limit)
        if self.todo:
            preflight(config.engine)  # a wrong URL or model path: one clear error before any worker starts

    def uses_ray(self) -> bool:
        return bool(self.todo)

    def inputs(self) -> dict[str, Any]:
        return {"cohort": self.config.cohort}

    def outputs(self) -> list[str]:
        output = AugmentOutput(self.config.output)
        return [output.parts_dir.name, output.summary_path(self.run_id).name]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, cohort, todo, done, failed = self.config, self.cohort, self.todo, self.done, self.failed
        output, run_id = AugmentOutput(config.output), self.run_id
        version, model, n_todo = get_prompt(config.prompt).version, config.engine.model_id, len(todo)
        log.info("augment %s with %s (%s), prompt %s: %d to do, %d already answered, %d failed before%s",
                 cohort.metadata.name, config.engine.kind, model, version, n_todo, len(done), len(failed),
                 " (retrying them)" if config.retry_failed else " (kept; retry_failed=true redoes them)")
        start = time.monotonic()
        writer = PartWriter(output.parts_dir, run_id)
        # Every engine retries a rejected answer inside its stage (engine.max_attempts), with the model loaded.
        # Nothing to do (a rerun of a finished run): no dataset, so no Ray workers start for it.
        total = WrittenRows()
        if todo:
            total = write_rows(build_dataset(config, cohort, todo), writer, config, n_todo, start)
        removed = drop_replaced_rows(output.parts_dir, failed & todo if config.retry_failed else set(), version,
                                     model, writer.run_id)
        seconds = time.monotonic() - start
        summary = {
            "run_id": run_id, "cohort": str(cohort.path), "prompt_version": version, "model": model,
            "engine": config.engine.kind, "subjects_to_do": n_todo, "rows_written": total.written,
            "error_rows": total.errors, "skipped_already_answered": len(done), "replaced_rows_removed": removed,
            "seconds": round(seconds, 1), "subjects_per_s": round(total.written / seconds, 2) if total.written else 0.0,
            "output_tokens_per_s": round(total.output_tokens / seconds, 1) if total.written else 0.0,
        }
        if output.has_rows():
            rows = output.rows()
            rows = rows.filter(pc.and_(pc.equal(rows["prompt_version"], version), pc.equal(rows["model"], model)))
            # Over every answer of this prompt and model in the folder, this run's and earlier runs'.
            summary["quality"] = cohort_quality(rows, cohort, config.describe)
        atomic_write_json(output.summary_path(run_id), summary)
        tracking.log_metrics({k: v for k, v in summary.items() if k != "quality"})
        log.info("augment done: %s", summary)
        return summary


def run_augment(config: AugmentConfig) -> dict[str, Any]:
    return run_job(AugmentJob(config))


def main(argv: list[str] | None = None) -> int:
    return job_main("augment", __doc__, argv, job=(AugmentConfig, run_augment))


if __name__ == "__main__":
    raise SystemExit(main())
