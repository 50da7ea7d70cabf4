"""``fmgnn tune bleg``: a Ray Tune sweep over BLEG's stage-3 (adapter and alignment) hyperparameters.

    fmgnn tune bleg --config configs/tune_bleg.yaml base_run=runs/bleg_nmda_rules
    ray job submit --working-dir . -- python -m pipelines.tune bleg --config configs/tune_bleg.yaml ...

The sweep reuses a finished ``fmgnn train bleg`` run: its stage-2 encoders and cached teacher
targets are fixed inputs, and every trial trains stage 3 on the chosen folds in lockstep (one Ray
Train run per trial, inside a Tune function trainable, metrics forwarded with
``TuneReportCallback``; with ``ray.num_workers=0`` the trial trains in its own process,
``tune/trial_runtime.py``). The objective is the mean validation cross-entropy over those folds;
test folds are never scored during the sweep. ASHA stops poor trials early; Optuna proposes
configurations. Outputs in ``sweep_dir``: ``results.parquet`` / ``results.csv`` (one row per
trial), ``trials.json`` (each trial's parameters and validation curve), ``best.yaml`` (a
``fmgnn train bleg`` config with the best stage 3: the one to use on new subjects), ``plots/``.

The pooled sweep's objective reads the validation scans of every fold, and those sit in the test
fold of another, so its best configuration has no honest test score. With ``retrain: true`` the
test estimate is nested: every outer fold gets a sweep of its own, whose trials train that fold
alone and are judged (by ASHA and Optuna too) on its validation scans, inside its training part;
the fold is then trained with its winner and tested once (``nested/``), and the per-fold test
metrics are compared, paired, with the base run's default configuration on the same folds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from bleg.run_record import BLEGRun
from tune.run_record import SweepRun
from bleg.train_student import AlignmentConfig, FoldInput, StudentFoldsTask, StudentTask
from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import LocalPath, OptionalLocalPath, load_config, save_config, with_values
from fmgnn.engine import fit, local_device, read_result
from fmgnn.evaluation.metrics import summarize
from fmgnn.errors import InputError
from fmgnn.evaluation.splits import cohort_splits
from fmgnn.io import atomic_write_json
from fmgnn.plots import plot_importance, plot_trial_curves
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.bleg import BLEGJobConfig, fold_result, fold_seed
from pipelines.classification import paired_comparison
from pipelines.command import job_main
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig, node_resources
from pipelines.trainers import make_trainer, resolve_storage_path, run_stage
from tune.space import search_space
from tune.storage import check_restorable, storage_filesystem
from tune.trial_runtime import TuneTrialRuntime

log = logging.getLogger("fmgnn.tune")

METRIC, MODE = "val_loss", "min"


@dataclass
class TuneJobConfig:
    """Args:
        base_run: A finished ``fmgnn train bleg`` run (with the ``bleg`` variant) whose stage 2 is reused.
        sweep_dir: Output folder; also the Tune experiment, so a rerun restores an interrupted sweep.
        name: Experiment name (deterministic trial run names derive from it).
        space: Search space over the base config's ``stage3.*`` keys (see ``tune/space.py``).
        num_samples: Trials.
        seeds: Which of the base run's seeds' folds each trial trains on (all folds of these seeds).
        scheduler: ``asha`` (early stopping) or ``fifo`` (every trial to the end).
        grace_period: ASHA: epochs before a trial can be stopped.
        reduction_factor: ASHA: keep the best 1/reduction_factor at each rung.
        search: ``optuna`` or ``random``.
        max_concurrent_trials: Cap on trials at once; None: what the cluster's CPUs allow.
        storage_path: Where trial checkpoints go (local or s3://, gs://); None: ``<sweep_dir>/ray_results``.
        retrain: Estimate the tuned model's test metrics by nested selection: a sweep per outer fold of
            ``seeds`` on that fold's validation scans, its winner trained and tested on that fold,
            paired with the base run's default configuration.
    """

    base_run: LocalPath = ""
    sweep_dir: LocalPath = "runs/tune_bleg"
    name: str = "bleg"
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 16
    seeds: list[int] = field(default_factory=lambda: [0])
    scheduler: str = "asha"
    grace_period: int = 5
    reduction_factor: int = 2
    search: str = "optuna"
    max_concurrent_trials: int | None = None
    storage_path: OptionalLocalPath = None
    retrain: bool = True
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        unknown = sorted(k for k in self.space if not k.startswith("stage3."))
        if unknown:
            raise InputError(f"space: {unknown}: only stage3.* can be searched over a fixed stage 2 "
                             "(stage-2 settings such as graph density or LoRA rank need a stage 2 per trial)")


def base_config(config: TuneJobConfig) -> BLEGJobConfig:
    return load_config(BLEGJobConfig, BLEGRun(config.base_run).config_file())


def fold_inputs(base: BLEGJobConfig, cohort: Cohort, seeds: list[int]) -> list[FoldInput]:
    """Stage-2 encoders and teacher targets of the base run's folds of ``seeds``."""
    record = BLEGRun(base.run_dir)
    splits = [s for s in cohort_splits(cohort, base.folds) if s.seed in seeds]
    if not splits:
        raise CohortError(f"seeds: the base run has seeds {base.folds.seeds}, not {seeds}")
    inputs = []
    for split in splits:
        targets = record.teacher_targets(split.name, base.lm.path, base.pooling, tuned=True)
        if targets is None:
            raise CohortError(f"base_run: {record.fold_dir(split.name)} has no teacher targets; finish the base run "
                              "first")
        ids = cohort.scan_ids()
        train = [i for i in split.train if str(ids[i]) in targets]  # drop_missing runs leave some out
        inputs.append(FoldInput(type(split)(split.seed, split.fold, train, split.val, split.test),
                                record.stage2_encoder(split.name).state_dict(), targets))
    return inputs


def trial_stage3(base: AlignmentConfig, params: dict[str, Any]) -> AlignmentConfig:
    """The base stage 3 with a trial's ``stage3.*`` values applied."""
    return with_values(base, {k.removeprefix("stage3."): v for k, v in params.items()})


def run_trials(config: TuneJobConfig, base: BLEGJobConfig, cohort_path: str, folds: list[FoldInput],
               encoder_config: Any, name: str, storage_path: str, tracking: JobRun) -> tune.ResultGrid:
    """One Tune experiment (restored when interrupted) whose trials train ``folds`` in lockstep."""
    # A trial that drives a trainer needs no CPU of its own (the trainer's workers hold them); one that
    # trains itself (ray.num_workers=0) holds a worker's share.
    trains_itself = config.ray.num_workers == 0
    trial_cpus = config.ray.cpus_per_worker if trains_itself else 0.1
    resources = {"CPU": trial_cpus, **({"GPU": 1} if trains_itself and config.ray.use_gpu else {}),
                 **node_resources(config.ray.node_resource)}
    trainable = tune.with_resources(
        make_trainable(base, cohort_path, ray.put(folds), encoder_config, config.ray, storage_path, name),
        resources)
    grid = restore_or_create(config, name, trainable, storage_path, tracking).fit()
    failed = [str(r.error).splitlines()[-1] for r in grid if r.error is not None]
    if failed:
        log.warning("%s: %d of %d trials failed, e.g. %s", name, len(failed), len(grid), failed[0])
        if len(failed) == len(grid):
            raise RuntimeError(f"every trial failed: {failed[0]}")
    return grid


def make_trainable(base: BLEGJobConfig, cohort_path: str, folds_ref: ray.ObjectRef, encoder_config: Any,
                   ray_config: RayConfig, storage_path: str, name: str):
    def trainable(params: dict[str, Any]) -> None:
        stage3 = trial_stage3(base.stage3, params)
        trial = tune.get_context().get_trial_id()
        task = StudentFoldsTask(f"{name}-{trial}", cohort_path, base.graph, encoder_config, ray.get(folds_ref),
                                stage3)
        if ray_config.num_workers == 0:  # the trial trains in its own process (tune/trial_runtime.py)
            fit(task, TuneTrialRuntime(local_device(ray_config.use_gpu), ray_config.precision))
            return
        # A deterministic run name per trial: a restored sweep resumes each trial from its checkpoint.
        trainer = make_trainer([task], task.name, ray_config, storage_path,
                               callbacks=[TuneReportCallback()])  # Ray: the trainer's reports reach Tune
        trainer.fit()
        wait_for_last_report()

    return trainable


def wait_for_last_report(timeout_s: float = 60.0) -> None:
    """Return only after Tune has taken the trainer's last report.

    TuneReportCallback hands reports over through a one-item queue that the trial's session polls;
    when the function returned right after ``fit()``, the final epoch's report was sometimes still in
    the queue and was lost (seen in CI: a finished 8-epoch trial recorded 7). Ray 2.60 exposes no
    public way to wait, hence the internal session's queue.
    """
    from ray.train._internal.session import get_session

    queue = get_session()._get_or_create_inter_actor_queue()
    deadline = time.monotonic() + timeout_s
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the session takes the item off the queue, then records it: let it finish


class SweepJob(Job[TuneJobConfig]):
    """``fmgnn tune bleg`` through the job recipe (``pipelines.job``)."""

    command, tracking_name, config_class = "tune bleg", "tune", TuneJobConfig
    # How many trials run at once and whether a nested estimate is added do not change a finished trial.
    free_settings = (*RUNTIME_SETTINGS, "sweep_dir", "max_concurrent_trials", "retrain")
    metrics_file = "summary.json"

    @property
    def folder(self) -> Path:
        return Path(self.config.sweep_dir)

    def check_inputs(self) -> None:
        if not self.config.base_run:
            raise CohortError("base_run: give a finished fmgnn train bleg run (base_run=runs/bleg_...)")
        self.base = base_config(self.config)
        self.cohort = Cohort(self.base.cohort)
        self.folds = fold_inputs(self.base, self.cohort, self.config.seeds)

    def uses_ray(self) -> bool:
        return True  # trials are Ray Tune actors even when each trains in its own process

    def inputs(self) -> dict[str, Any]:
        return {"base_run": self.config.base_run}

    def outputs(self) -> list[str]:
        return ["summary.json", "trials.json", "best.yaml", "results.parquet", "plots",
                *(["nested"] if self.config.retrain else [])]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, base, cohort, folds = self.config, self.base, self.cohort, self.folds
        sweep = SweepRun(self.folder)
        encoder_config = BLEGRun(base.run_dir).stage2_encoder(folds[0].split.name).config
        storage_path = resolve_storage_path(config.storage_path, self.folder)
        cohort_path = str(cohort.path.resolve())
        start = time.monotonic()
        grid = run_trials(config, base, cohort_path, folds, encoder_config, config.name, storage_path, tracking)
        results = grid.get_dataframe()
        parquet, csv = sweep.results_paths()
        results.to_parquet(parquet)
        results.to_csv(csv, index=False)
        best = grid.get_best_result(metric="best_score", mode=MODE, scope="last")
        best_params = {k: best.config[k] for k in config.space}
        best_config = with_values(base, {**best_params, "run_dir": str(sweep.tuned_run_dir()), "variants": ["bleg"]})
        save_config(best_config, sweep.best_config_path())
        summary = {"trials": len(results), "failed_trials": sum(r.error is not None for r in grid),
                   "best_params": best_params, "best_val_loss": best.metrics["best_score"],
                   "trial_epochs": int(results["training_iteration"].sum()),
                   "sweep_seconds": round(time.monotonic() - start, 1)}
        log.info("sweep: %d trials, %d trial-epochs, best %s (validation loss %.4f)", summary["trials"],
                 summary["trial_epochs"], best_params, summary["best_val_loss"])
        atomic_write_json(sweep.trials_path(), trial_curves(grid, list(config.space)))
        plot_sweep(results, grid, config, sweep.plots_dir())
        if config.retrain:
            summary["nested"] = nested_estimate(config, base, cohort, folds, encoder_config, storage_path, tracking)
        atomic_write_json(sweep.summary_path(), summary)
        tracking.log_metrics({k: v for k, v in summary.items() if k not in ("best_params", "nested")})
        return summary


def run_sweep(config: TuneJobConfig) -> dict[str, Any]:
    return run_job(SweepJob(config))


def nested_estimate(config: TuneJobConfig, base: BLEGJobConfig, cohort: Cohort, folds: list[FoldInput],
                    encoder_config: Any, storage_path: str, tracking: JobRun) -> dict[str, Any]:
    """Each outer fold tuned on its own validation scans, trained with its winner and tested once; paired
    with the base run's default configuration on the same folds."""
    sweep = SweepRun(Path(config.sweep_dir).resolve())
    cohort_path = str(cohort.path.resolve())
    chosen, tasks = {}, []
    for fold in folds:
        name = f"{config.name}-{fold.split.name}"
        grid = run_trials(config, base, cohort_path, [fold], encoder_config, name, storage_path, tracking)
        best = grid.get_best_result(metric="best_score", mode=MODE, scope="last")
        chosen[fold.split.name] = {"params": {k: best.config[k] for k in config.space},
                                   "val_loss": best.metrics["best_score"], "trials": len(grid)}
        log.info("nested: %s chose %s (validation loss %.4f)", fold.split.name, chosen[fold.split.name]["params"],
                 best.metrics["best_score"])
        tasks.append(StudentTask(f"nested-{fold.split.name}", cohort_path, fold.split, base.graph,
                                 trial_stage3(base.stage3, chosen[fold.split.name]["params"]), encoder_config,
                                 fold.encoder_state, fold.targets, fold_seed(fold.split),
                                 output=sweep.nested_dir(fold.split.name)))
    run_stage(tasks, "nested", config.ray, storage_path)
    record = BLEGRun(base.run_dir)
    runs: dict[str, list[dict[str, Any]]] = {"nested": [], "default": []}
    for fold in folds:
        result = fold_result(fold.split, read_result(sweep.nested_dir(fold.split.name)),
                             chosen=chosen[fold.split.name]["params"])
        atomic_write_json(sweep.nested_result_path(fold.split.name), result)
        runs["nested"].append(result)
        runs["default"].append(json.loads(record.fold_result_path("bleg", fold.split.name).read_text()))
    return {"chosen": chosen,
            "models": {m: {"summary": summarize([f["metrics"] for f in r])} for m, r in runs.items()},
            "paired": paired_comparison(runs, [f.split for f in folds], reference="default")}


def restore_or_create(config: TuneJobConfig, name: str, trainable: Any, storage_path: str,
                      tracking: JobRun) -> tune.Tuner:
    """``Tuner.restore`` of an interrupted sweep (finished trials are not rerun), else a new Tuner.

    Trials go to MLflow through Ray Tune's own ``MLflowLoggerCallback``, nested under the sweep's run.
    """
    path = os.path.join(storage_path, name)
    filesystem = storage_filesystem(storage_path)
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        log.info("restoring the interrupted sweep at %s", path)
        check_restorable(path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem)
    concurrent = trial_concurrency(config, ray.cluster_resources())
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=int(config_epochs(config)),
                              grace_period=config.grace_period, reduction_factor=config.reduction_factor) \
        if config.scheduler == "asha" else FIFOScheduler()
    search = OptunaSearch() if config.search == "optuna" else None
    return tune.Tuner(
        trainable,
        param_space=search_space(config.space),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, search_alg=search,
                                    num_samples=config.num_samples, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                                  callbacks=mlflow_callbacks(config, tracking)),
    )


def trial_concurrency(config: TuneJobConfig, resources: dict[str, float]) -> int:
    """Trials at once: ``max_concurrent_trials`` as given (Tune queues the trials that do not fit yet, and an
    autoscaling cluster, which may start with its head alone, adds nodes for them); without it, as many as
    the cluster's CPUs, and GPUs when trials train on them, hold now."""
    if config.max_concurrent_trials:
        return config.max_concurrent_trials
    workers = max(config.ray.num_workers, 1)
    fits = [resources.get("CPU", 1) // (config.ray.cpus_per_worker * workers + (0.1 if config.ray.num_workers else 0))]
    if config.ray.use_gpu:
        fits.append(resources.get("GPU", 0) // workers)
    return max(1, int(min(fits)))


def mlflow_callbacks(config: TuneJobConfig, tracking: JobRun) -> list[Any]:
    if not tracking.enabled:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=tracking.uri, experiment_name=config.tracking.experiment,
                                 tags={"mlflow.parentRunId": tracking.run_id})]


def trial_curves(grid: Any, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each trial's parameters and validation loss per epoch (the report's sweep figure)."""
    trials = {}
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or METRIC not in frame:
            continue
        trial_id = str(frame["trial_id"].iloc[-1]) if "trial_id" in frame else result.path.rsplit("/", 1)[-1]
        trials[trial_id] = {"params": {k: result.config[k] for k in keys if k in result.config},
                            "epoch": frame["training_iteration"].astype(int).tolist(),
                            "val_loss": frame[METRIC].astype(float).tolist()}
    return trials


def plot_sweep(results: Any, grid: Any, config: TuneJobConfig, folder: Path) -> None:
    """Validation loss per trial over epochs, and a parameter importance bar chart (Optuna's fANOVA)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_trial_curves([(r.metrics_dataframe["training_iteration"].tolist(), r.metrics_dataframe[METRIC].tolist())
                       for r in grid if r.metrics_dataframe is not None and METRIC in r.metrics_dataframe],
                      folder / "trials.png")
    importance = parameter_importance(results, list(config.space))
    if importance:
        plot_importance(importance, folder / "importance.png")
        atomic_write_json(folder / "importance.json", importance)


def parameter_importance(results: Any, keys: list[str]) -> dict[str, float]:
    """fANOVA importance of each searched parameter for the trials' best validation loss."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    varying = [k for k in keys if f"config/{k}" in results and results[f"config/{k}"].nunique() > 1]
    rows = results.dropna(subset=["best_score"])
    if not varying or len(rows) < 3:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for _, row in rows.iterrows():
        params, dists = {}, {}
        for key in varying:
            value = row[f"config/{key}"]
            if isinstance(value, str) or results[f"config/{key}"].nunique() <= 6:
                choices = sorted(results[f"config/{key}"].dropna().unique().tolist(), key=str)
                params[key], dists[key] = value, CategoricalDistribution(choices)
            else:
                low, high = results[f"config/{key}"].min(), results[f"config/{key}"].max()
                params[key], dists[key] = float(value), FloatDistribution(float(low), float(high))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=row["best_score"]))
    return dict(optuna.importance.get_param_importances(study))


def config_epochs(config: TuneJobConfig) -> int:
    fixed = config.space.get("stage3.epochs")
    return int(fixed) if isinstance(fixed, (int, float)) else base_config(config).stage3.epochs


def main(argv: list[str] | None = None) -> int:
    return job_main("tune", __doc__, argv, kinds={"bleg": lambda: (TuneJobConfig, run_sweep)})


if __name__ == "__main__":
    raise SystemExit(main())

