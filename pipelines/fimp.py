"""``fmgnn train fimp``: FIMP against its baselines on a reconstruction task, seeds x models under Ray Train.

    fmgnn train fimp --config configs/fimp_fmri.yaml                    # the built-in synthetic cohort
    fmgnn train fimp --config configs/fimp_fmri.yaml cohort=cohorts/my_scans.parquet
    fmgnn train fimp --config configs/fimp_genes.yaml genes.path=../shared/data/tangram/smFISH_anndata.h5ad
    fmgnn train fimp --config configs/fimp_images.yaml
    ray job submit --working-dir . -- python -m pipelines.train fimp --config configs/fimp_fmri.yaml

Tasks: ``fmri`` (one graph per scan, fimp/tasks/fmri.py), ``recording`` (one recording's regions or
surface vertices, fimp/tasks/recording.py), ``genes`` (one graph of cells, fimp/tasks/spatial.py),
``images`` (one graph of images, fimp/tasks/images.py). Per seed the scans
(or nodes) are split into train, validation and test; every model of that seed sees the same split
and the same validation and test masks. ``fimp_pretrained`` starts from a foundation model: a
Hugging Face folder (``pretrained=PATH``, e.g. from ``fmgnn pretrain``), or ``pretrained=foundation``:
the ``foundation`` baseline of the same seed, trained without the graph on that split's training
nodes only, whose layers then become FIMP's message operators. The run directory holds ``config.yaml``,
``versions.json``, ``<model>/seed<s>.json``, ``metrics.json`` (mean and std over seeds, trained
parameters and seconds per model, FIMP's paired difference to the best baseline, and the foundation
model's to the MLP, which reads the same tokens) and ``plots/`` (learning curves, true vs predicted
windows). A rerun skips finished (model, seed) pairs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fimp.hf_export import check_token_weights, load_foundation
from fimp.reconstruction import TRIVIAL_KINDS, ReconstructionConfig, build_model
from fimp.run_record import FIMPRun
from fimp.tasks.fmri import FMRITaskConfig
from fimp.tasks.images import ImageTaskConfig, load_images
from fimp.tasks.nodes import NodeTask, split_nodes
from fimp.tasks.recording import RecordingTaskConfig, load_recording
from fimp.tasks.spatial import SpatialTaskConfig, load_spatial
from fimp.train_node_reconstruction import NodeReconstructionSpec, NodeReconstructionTask
from fimp.train_reconstruction import (
    ReconstructionSpec,
    ReconstructionTask,
    ReconstructionTrainConfig,
    TokenReconstructionTask,
)
from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import LocalPath, OptionalLocalPath, OptionalModelPath
from fmgnn.engine import RESULT_FILE, TrainTask, World, is_done, read_result
from fmgnn.errors import InputError
from fmgnn.evaluation.metrics import mean_std
from fmgnn.evaluation.paired import best_of, format_relative, from_dict, paired_difference, relative_r2, split_ratio
from fmgnn.io import atomic_dir, atomic_write_json
from fmgnn.plots import plot_reconstruction_examples
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic, reconstruction_ceiling
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig
from pipelines.trainers import resolve_storage_path, run_stage

log = logging.getLogger("fmgnn.fimp")

BASELINES = ("foundation", "mlp", "gcn", "sage", "gat", "gin", "gps")
TASKS = ("fmri", "recording", "genes", "images")
SERIES_TASKS = ("fmri", "recording")  # tokens are consecutive windows of one series: interpolation applies
FROM_FOUNDATION = "foundation"  # pretrained=foundation: the same seed's foundation baseline
PRETRAINED_MODELS = ("fimp_pretrained", "foundation_pretrained")  # start from ``pretrained``


@dataclass
class FIMPJobConfig:
    """Args:
        task: ``fmri``, ``genes`` or ``images``.
        cohort: fmri: cohort with time series; empty: a synthetic cohort written into run_dir (``synthetic``).
        synthetic: The built-in cohort when ``cohort`` is empty (its R^2 ceiling goes into metrics.json).
        run_dir: Output directory.
        models: ``fimp`` (FIMP-base), ``fimp_pretrained`` (needs ``pretrained``), baselines,
            ``foundation_pretrained`` (the foundation model alone from a ``pretrained`` folder), and the
            trivial rows ``node_mean``, ``interpolation`` (fmri, recording) and ``frame_mean``
            (recording), scored without training. Empty: FIMP-base, every baseline and the trivial
            rows that fit the task.
        pretrained: A foundation model folder (Hugging Face ViT/ViTMAE format, e.g. from ``fmgnn pretrain``),
            or ``foundation``: the same seed's ``foundation`` baseline (trained first).
        seeds: One split of the scans per seed.
        val_fraction: Share of scans for validation.
        test_fraction: Share of scans for testing.
        fmri: Windows, graph and masking of the fmri task.
        recording: Source, windows, graph and masking of the recording task.
        genes: Data, graph and masking of the genes task.
        images: Data, graph and masking of the images task.
        model: Model shapes (the kind is set per entry of ``models``).
        optim: Optimisation.
        storage_path: Ray Train checkpoints (local or s3://, gs://); None: ``<run_dir>/ray_results``.
    """

    task: str = "fmri"
    cohort: LocalPath = ""
    # FIMP's own synthetic cohort is smoother and less noisy than the classification sample's (whose
    # reconstruction ceiling is R^2 0.28): ceiling 0.55, most of it shared within networks.
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(
        n_subjects=60, n_timepoints=200, ar_coefficient=0.9, noise_scale=0.5))
    run_dir: LocalPath = "runs/fimp_fmri"
    models: list[str] = field(default_factory=list)
    pretrained: OptionalModelPath = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    fmri: FMRITaskConfig = field(default_factory=FMRITaskConfig)
    recording: RecordingTaskConfig = field(default_factory=RecordingTaskConfig)
    genes: SpatialTaskConfig = field(default_factory=SpatialTaskConfig)
    images: ImageTaskConfig = field(default_factory=ImageTaskConfig)
    model: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    storage_path: OptionalLocalPath = None
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task: {self.task!r} is not one of {list(TASKS)}")
        if not self.models:
            self.models = ["fimp", *BASELINES, "node_mean", *(["interpolation"] if self.task in SERIES_TASKS else []),
                           *(["frame_mean"] if self.task == "recording" else [])]
        unknown = sorted(set(self.models) - {*PRETRAINED_MODELS, "fimp", *BASELINES, *TRIVIAL_KINDS})
        if unknown:
            raise InputError(f"models: unknown {unknown}")
        if "interpolation" in self.models and self.task not in SERIES_TASKS:
            raise InputError(f"models: interpolation reads a node's tokens as consecutive windows of one series; "
                             f"task={self.task} has no such order (it applies to {list(SERIES_TASKS)})")
        if "frame_mean" in self.models and self.task != "recording":
            raise InputError(f"models: frame_mean averages the training nodes at each time point, which needs "
                             f"nodes on one time axis (task=recording); task={self.task} has none")
        if "fimp_pretrained" in self.models and not self.pretrained:
            raise InputError("models: fimp_pretrained needs pretrained=<foundation model folder> or "
                             "pretrained=foundation")
        if "foundation_pretrained" in self.models and self.pretrained in (None, FROM_FOUNDATION):
            raise InputError("models: foundation_pretrained needs pretrained=<foundation model folder>")
        if self.pretrained == FROM_FOUNDATION and "fimp_pretrained" in self.models and "foundation" not in self.models:
            raise InputError("pretrained=foundation: add foundation to models (it is trained first)")


def split_scans(subjects: Sequence[str], seed: int, val_fraction: float,
                test_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """One split of scans per seed, drawn over subjects: every scan of a subject lands on the same side.
    With one scan per subject it is the node split (``split_nodes``) of the scans."""
    subjects = np.asarray(subjects, dtype=object).astype(str)
    if len(np.unique(subjects)) == len(subjects):
        return split_nodes(len(subjects), seed, val_fraction, test_fraction)
    return split_groups(subjects, seed, val_fraction, test_fraction)


def split_groups(groups: Sequence[str], seed: int, val_fraction: float,
                 test_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test indices with every index of a group on one side: the sorted distinct groups
    drawn as ``split_nodes`` draws nodes."""
    unique, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    parts = split_nodes(len(unique), seed, val_fraction, test_fraction)
    return tuple(np.flatnonzero(np.isin(group_of, part)).tolist() for part in parts)


def check_pretrained(config: FIMPJobConfig, n_tokens: int, token_values: int) -> None:
    """A pretrained folder must have the task's token shape and the configured foundation model's shape;
    checked before anything is written (it would otherwise fail inside a worker as a size mismatch)."""
    if not set(PRETRAINED_MODELS) & set(config.models) or config.pretrained in (None, FROM_FOUNDATION):
        return
    folder = Path(config.pretrained)
    if not (folder / "config.json").is_file():
        raise InputError(f"pretrained={folder}: no config.json; give a foundation model folder (fmgnn pretrain's "
                         "output, or a Hugging Face ViT/ViTMAE folder)")
    saved = json.loads((folder / "config.json").read_text())
    ours = config.model.foundation
    shape = {"hidden": ("hidden_size", ours.hidden), "heads": ("num_attention_heads", ours.heads),
             "layers": ("num_hidden_layers", ours.layers), "intermediate": ("intermediate_size", ours.intermediate)}
    wrong = [f"model.foundation.{k}={mine} but the folder has {saved[key]}" for k, (key, mine) in shape.items()
             if key in saved and saved[key] != mine]
    wrong += check_token_weights(folder, ReconstructionConfig(**{**config.model.__dict__, "n_tokens": n_tokens,
                                                                 "token_values": token_values}))
    if wrong:
        raise InputError(f"pretrained={folder}: " + "; ".join(wrong))


def pretrained_state(config: FIMPJobConfig, model_config: ReconstructionConfig) -> dict:
    """A token model's initial weights with every FIMP layer's foundation layers from ``pretrained``."""
    return load_foundation(build_model(model_config), config.pretrained).state_dict()


def from_foundation_baseline(path: Path, model_config: ReconstructionConfig) -> dict:
    """FIMP's initial weights from a trained ``foundation`` baseline: its embedding, decoder, and its
    foundation layers in every FIMP layer."""
    trained = torch.load(path, map_location="cpu", weights_only=True)  # saved by a GPU worker, read on a CPU head
    model = build_model(model_config)
    state = model.state_dict()
    for key, value in trained.items():
        if key.startswith("convs.0."):
            for i in range(len(model.convs)):
                state[f"convs.{i}.{key.removeprefix('convs.0.')}"] = value
        elif key in state:
            state[key] = value
    return state


@dataclass
class TaskData:
    """What the steps of one seed need: the fmri cohort file, or the node task of that seed."""

    cohort_path: Path | None = None
    n_items: int = 0
    nodes: NodeTask | None = None
    n_tokens: int = 0
    token_values: int = 0
    subjects: np.ndarray | None = None  # the fmri task's scans' subjects

    def split(self, seed: int, val_fraction: float, test_fraction: float) -> tuple[list[int], list[int], list[int]]:
        if self.subjects is not None:
            return split_scans(self.subjects, seed, val_fraction, test_fraction)
        return split_nodes(self.n_items, seed, val_fraction, test_fraction)


def check_series_length(cohort: Cohort, fmri: FMRITaskConfig) -> None:
    """Every scan long enough for window x n_windows (else one error naming the shortest); a longer series is
    cut, and the log says how much of it is used."""
    lengths = np.asarray(cohort.column("n_timepoints").to_pylist(), dtype=float)
    needed = fmri.window * fmri.n_windows
    if np.isnan(lengths).any():
        return  # scans without a time series fail by name when loaded
    if lengths.min() < needed:
        shortest = int(lengths.argmin())
        raise CohortError(f"{cohort.path}: scan {cohort.scan_ids()[shortest]} has {int(lengths.min())} time points; "
                          f"the task needs {needed} (fmri.window={fmri.window} x fmri.n_windows={fmri.n_windows}): "
                          f"lower fmri.n_windows to at most {int(lengths.min()) // fmri.window}")
    if lengths.max() > needed:
        log.warning("fmri: the first %d of up to %d time points per scan are used (fmri.window=%d x fmri.n_windows=%d; "
                    "%.0f%% of the longest scan); raise fmri.n_windows to use more", needed, int(lengths.max()),
                    fmri.window, fmri.n_windows, 100 * needed / lengths.max())


def load_task(config: FIMPJobConfig, cohort_path: Path, seed: int) -> TaskData:
    """One seed's data; ``cohort_path``: the fmri task's cohort."""
    if config.task == "genes":
        task = load_spatial(config.genes)
    elif config.task == "recording":
        task = load_recording(config.recording)
    elif config.task == "images":
        task = load_images(config.images, seed)  # the graph depends on the seed's hidden patches
    else:
        cohort = Cohort(cohort_path)
        if cohort.timeseries(0) is None:
            raise CohortError(f"{cohort_path}: FC only; fMRI reconstruction needs time series")
        check_series_length(cohort, config.fmri)
        return TaskData(cohort_path.resolve(), len(cohort), None, config.fmri.n_windows, config.fmri.window,
                        cohort.subject_ids())
    return TaskData(None, task.num_nodes, task, task.x.shape[1], task.x.shape[2])


def score_without_training(task: TokenReconstructionTask) -> None:
    """A trivial row: nothing to fit, so the model is scored on the test part and exported as a trained
    one would be, through the same task (the same split, scaling and fixed masks)."""
    if is_done(task):
        return
    started = time.monotonic()
    task.setup(World())
    model = task.build_model()
    if model.config.kind == "frame_mean":
        model.frame_values = task.training_values().mean(0)
    final = {"task": task.name, "best_epoch": -1, "history": [], "done": True, **task.test(model),
             "seconds": round(time.monotonic() - started, 2)}
    with atomic_dir(Path(task.output)) as directory:
        task.export(model, directory)
        (directory / RESULT_FILE).write_text(json.dumps(final))


class FIMPJob(Job[FIMPJobConfig]):
    """``fmgnn train fimp`` through the job recipe (``pipelines.job``)."""

    command, tracking_name, config_class = "train fimp", "fimp", FIMPJobConfig
    # Adding models (or trivial rows) to a run does not change a finished (model, seed) pair.
    free_settings = (*RUNTIME_SETTINGS, "run_dir", "models")

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir)

    def cohort_path(self) -> Path:
        """The fmri task's cohort: the user's, or the built-in one, which the run writes into its folder."""
        return Path(self.config.cohort) if self.config.cohort else self.folder / "synthetic.parquet"

    def load(self) -> dict[int, TaskData]:
        return {seed: load_task(self.config, self.cohort_path(), seed) for seed in self.config.seeds}

    def check_inputs(self) -> None:
        config = self.config
        # The built-in cohort is written by the run (nothing is written before the recipe's lock).
        self.tasks_data = self.load() if config.task != "fmri" or self.cohort_path().is_file() else None
        if self.tasks_data is None:
            check_pretrained(config, config.fmri.n_windows, config.fmri.window)
        else:
            first = next(iter(self.tasks_data.values()))
            check_pretrained(config, first.n_tokens, first.token_values)

    def inputs(self) -> dict[str, Any]:
        config = self.config
        return {"cohort": str(self.cohort_path()) if config.task == "fmri" else None,
                "pretrained": config.pretrained, "genes.path": config.genes.path if config.task == "genes" else None,
                "recording.path": config.recording.path if config.task == "recording" else None}

    def outputs(self) -> list[str]:
        return ["metrics.json", "config.yaml", "plots", *self.config.models]

    def task(self, model_name: str, seed: int) -> TrainTask:
        """The training task of one model on one seed's split and masks."""
        config, data, record = self.config, self.tasks_data[seed], FIMPRun(self.folder)
        train, val, test = data.split(seed, config.val_fraction, config.test_fraction)
        kind = "fimp" if model_name.startswith("fimp") else model_name.removesuffix("_pretrained")
        # model.finetune is how pretrained foundation layers train; every other model trains all its weights.
        finetune = config.model.finetune if model_name in PRETRAINED_MODELS else "full"
        model_config = ReconstructionConfig(**{**config.model.__dict__, "kind": kind, "n_tokens": data.n_tokens,
                                               "token_values": data.token_values, "finetune": finetune})
        init = None
        if model_name in PRETRAINED_MODELS:
            init = (from_foundation_baseline(record.model_dir("foundation", seed) / "model.pt", model_config)
                    if config.pretrained == FROM_FOUNDATION else pretrained_state(config, model_config))
        name, output = f"{model_name}-seed{seed}", record.model_dir(model_name, seed)
        mask_ratio = {"fmri": config.fmri.mask_ratio, "recording": config.recording.mask_ratio,
                      "genes": config.genes.mask_ratio, "images": config.images.mask_ratio}[config.task]
        if data.nodes is not None:
            return NodeReconstructionTask(name, NodeReconstructionSpec(
                data.nodes, train, val, test, mask_ratio, model_config, config.optim, init, seed), output)
        return ReconstructionTask(name, ReconstructionSpec(
            str(data.cohort_path), train, val, test, config.fmri, model_config, config.optim, init, seed), output)

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, run_dir, record = self.config, self.folder, FIMPRun(self.folder)
        if self.tasks_data is None:
            ingest_synthetic(self.cohort_path(), config.synthetic)
            self.tasks_data = self.load()
        storage_path = resolve_storage_path(config.storage_path, run_dir)
        started = time.monotonic()
        tracked: list[TrainTask] = []
        # With pretrained=foundation, FIMP-pretrained starts from its seed's foundation baseline: a second stage.
        later = ["fimp_pretrained"] if config.pretrained == FROM_FOUNDATION else []
        for name in [m for m in config.models if m in TRIVIAL_KINDS]:
            for seed in config.seeds:
                score_without_training(self.task(name, seed))
        trained = [m for m in config.models if m not in TRIVIAL_KINDS]
        for stage, names in (("fimp", [m for m in trained if m not in later]),
                             ("fimp_from_foundation", [m for m in trained if m in later])):
            stage_tasks = [self.task(name, seed) for seed in config.seeds for name in names]
            if stage_tasks:
                run_stage(stage_tasks, stage, config.ray, storage_path)
                tracked.extend(stage_tasks)
        for name in config.models:
            for seed in config.seeds:
                if record.seed_result_path(name, seed).is_file():  # recorded by an earlier run
                    continue
                metrics = read_result(record.model_dir(name, seed))
                train, _, test = self.tasks_data[seed].split(seed, config.val_fraction, config.test_fraction)
                result = {"model": name, "seed": seed, "mse": metrics["test_mse"], "r2": metrics["test_r2"],
                          "best_epoch": metrics["best_epoch"], "history": metrics["history"],
                          "seconds": metrics["seconds"], "n_parameters": metrics.get("n_parameters"),
                          "n_train": len(train), "n_test": len(test)}
                atomic_write_json(record.seed_result_path(name, seed), result)
                log.info("%s seed %d: test MSE %.4f, R^2 %.3f", name, seed, result["mse"], result["r2"])
        summary = summarize_runs(run_dir, config)
        summary["wall_time_s"] = round(time.monotonic() - started, 1)
        if config.task == "fmri" and not config.cohort:
            summary["r2_ceiling"] = round(reconstruction_ceiling(config.synthetic), 4)
        atomic_write_json(record.metrics_path(), summary)
        plot_reconstructions(run_dir, config)
        tracking.log_tasks(tracked)
        tracking.log_metrics(summary["models"])
        print(format_table(summary))
        return summary


def run_fimp(config: FIMPJobConfig) -> dict[str, Any]:
    return run_job(FIMPJob(config))


def summarize_runs(run_dir: Path, config: FIMPJobConfig) -> dict[str, Any]:
    models, all_runs = {}, {}
    for name in config.models:
        runs = all_runs[name] = [FIMPRun(run_dir).seed_result(name, s) for s in config.seeds]
        models[name] = {k: {"mean": float(np.mean([r[k] for r in runs])),
                            "std": float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else None}
                        for k in ("mse", "r2")}
        models[name]["seconds"] = sum(r["seconds"] for r in runs)
        models[name]["n_parameters"] = runs[0].get("n_parameters")
    summary: dict[str, Any] = {"task": config.task, "seeds": config.seeds, "models": models}
    baselines = [m for m in config.models if m in BASELINES or m in TRIVIAL_KINDS]
    best = best_of({m: models[m]["r2"]["mean"] for m in baselines}, baselines)
    if best is not None:
        # Every model of a seed ran on the same node split and masks: the seeds are paired splits.
        runs = {m: {f"seed{r['seed']}": r for r in all_runs[m]} for m in config.models}
        ratio = split_ratio([r["n_test"] for r in all_runs[best]], [r["n_train"] for r in all_runs[best]])
        pairs = [(fimp, best, f"{fimp}_vs_best_baseline") for fimp in config.models if fimp.startswith("fimp")]
        if "foundation" in config.models and "mlp" in config.models:
            # The token model's own check: both read exactly the node's own tokens, neither sees the graph.
            pairs.append(("foundation", "mlp", "foundation_vs_mlp"))
        # What the pretrained weights give each token model over the same model from random weights.
        pairs += [(pretrained, pretrained.removesuffix("_pretrained"), f"{pretrained}_vs_random_weights")
                  for pretrained in PRETRAINED_MODELS
                  if pretrained in config.models and pretrained.removesuffix("_pretrained") in config.models]
        for model, reference, key in pairs:
            summary[key] = {
                "baseline": reference,
                **{k: paired_difference(model, reference, k, runs, ratio).to_dict() for k in ("r2", "mse")},
                "relative_r2": relative_r2(models[model]["r2"]["mean"], models[reference]["r2"]["mean"])}
            if key.endswith("_vs_best_baseline") and best not in TRIVIAL_KINDS:
                summary[key]["equal_time"] = at_equal_time(model, reference, runs, ratio)
    return summary


def cumulative_seconds(run: dict[str, Any]) -> list[float]:
    """Seconds trained by the end of each epoch; runs recorded before the engine kept them per epoch get
    equal epochs."""
    history = run["history"]
    if all("seconds" in h for h in history):
        return [h["seconds"] for h in history]
    return [run["seconds"] * (i + 1) / len(history) for i in range(len(history))]


def at_equal_time(model: str, reference: str, runs: dict[str, dict[str, dict]], ratio: float) -> dict[str, Any]:
    """``model`` against ``reference`` at the reference's training time, seed by seed: the model's best
    validation R^2 within the seconds the reference trained for, against the reference's best.

    Validation, not test: only the chosen epoch was tested. A seed whose first epoch of the model took
    longer than the reference's whole run has no score within the budget and counts as missing.
    """
    scores: dict[str, dict[str, dict[str, Any]]] = {model: {}, reference: {}}
    for split, reference_run in runs[reference].items():
        budget, model_run = reference_run["seconds"], runs[model][split]
        within = [h["val_r2"] for h, s in zip(model_run["history"], cumulative_seconds(model_run)) if s <= budget]
        scores[model][split] = {"val_r2": max(within) if within else None, "epochs": len(within), "budget_s": budget}
        scores[reference][split] = {"val_r2": max(h["val_r2"] for h in reference_run["history"])}
    result: dict[str, Any] = {"per_split": scores}
    if any(v["val_r2"] is not None for v in scores[model].values()):
        result["val_r2"] = paired_difference(model, reference, "val_r2", scores, ratio).to_dict()
    return result


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'model':<22}{'MSE':>20}{'R^2':>20}{'parameters':>12}{'seconds':>10}"]
    for name, m in summary["models"].items():
        lines.append(f"{name:<22}{mean_std(m['mse'], 4):>20}{mean_std(m['r2']):>20}"
                     f"{m.get('n_parameters') or '':>12}{m['seconds']:>10.0f}")
    for key, value in summary.items():
        if key.endswith(("_vs_best_baseline", "_vs_mlp", "_vs_random_weights")):  # paired over seeds; for MSE a
            # negative difference is the gain
            lines += [from_dict(value[m]).line() for m in ("r2", "mse")]
            lines.append(f"{key.split('_vs_')[0]} against {value['baseline']}: "
                         f"{format_relative(value.get('relative_r2'))}")
            if "equal_time" in value:
                lines.append(equal_time_line(key.split("_vs_")[0], value["baseline"], value["equal_time"]))
    if "r2_ceiling" in summary:
        lines.append(f"R^2 ceiling of the synthetic cohort (its noise-free signal): {summary['r2_ceiling']:.3f}")
    return "\n".join(lines)


def equal_time_line(model: str, baseline: str, equal_time: dict[str, Any]) -> str:
    if "val_r2" not in equal_time:
        return f"at {baseline}'s training time: {model} finished no epoch within it on any seed"
    runs = equal_time["per_split"][model]
    missing = [split for split, run in runs.items() if run["val_r2"] is None]
    note = f" ({len(missing)} of {len(runs)} seeds finished no epoch within it)" if missing else ""
    return f"at {baseline}'s training time: {from_dict(equal_time['val_r2']).line()}{note}"


def plot_reconstructions(run_dir: Path, config: FIMPJobConfig) -> None:
    """One test item per model (first seed): images as pictures, otherwise true vs predicted tokens."""
    record = FIMPRun(run_dir)
    record.plots_dir().mkdir(exist_ok=True)
    examples = {name: record.example(name, config.seeds[0]) for name in config.models}
    xlabel = "gene (held-out genes shaded)" if config.task == "genes" else "time point (hidden windows shaded)"
    plot_reconstruction_examples(examples, config.task == "images", xlabel, record.plots_dir() / "reconstruction.png")
