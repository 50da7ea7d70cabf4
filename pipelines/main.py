"""The main job: the whole pipeline on one cohort, ending in a report.

    fmgnn run                                              # built-in sample cohort, embedded local Ray
    fmgnn run cohort=cohorts/nmda_aal.parquet              # a user's cohort (time series for the FIMP stage)
    fmgnn run augment.engine.kind=vllm augment.engine.model=Qwen/Qwen2.5-7B-Instruct bleg.lm.path=microsoft/biogpt
    ray job submit --working-dir . -- python -m pipelines.main out_dir=/mnt/shared/runs/main

Stages, each a job of its own run in this process on one Ray instance, outputs under ``out_dir``:

1. ``ingest``: the sample cohort (``cohort.parquet``) unless ``cohort`` is given; ``graphs.json``.
2. ``augment``: LLM descriptions (``augment/``); ``engine.kind=auto`` takes SmolLM2 through
   transformers when its package is installed, else the rules engine.
3. ``bleg``: BLEG stages 2 and 3 with its ablations on the same folds (``bleg/``).
4. ``tune``: a small Ray Tune sweep of stage 3 over ``bleg/``'s stage 2 (``tune/``).
5. ``pretrain``: a BrainLM-style foundation model pretrained on other data (``foundation/``): by default the real
   recording brainspace ships, else a synthetic cohort of other subjects.
6. ``fimp``: FIMP, FIMP from the pretrained model and a GNN on masked fMRI reconstruction (``fimp/``).
7. ``report``: ``report.html`` (self-contained) and ``figures.json``.

A rerun with the same ``out_dir`` resumes: every stage skips what it finished (augmented subjects,
trained folds, finished trials) and continues what it did not. ``summary.json`` has every stage's time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import LocalPath, OptionalLocalPath, resolve_paths
from fmgnn.errors import InputError
from fmgnn.graphs import GraphConfig, edge_mask
from fmgnn.io import atomic_write_json
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.augment import AugmentConfig, AugmentJob, run_augment
from pipelines.bleg import BLEGJob, BLEGJobConfig, run_bleg
from pipelines.command import job_main
from pipelines.fimp import FIMPJob, FIMPJobConfig, run_fimp
from pipelines.pretrain import SYNTHETIC, PretrainConfig, PretrainJob, corpus_sources, run_pretrain
from pipelines.job import RUNTIME_SETTINGS, Job, run_job
from pipelines.ray_session import RayConfig
from pipelines.report import write_report
from pipelines.tune import SweepJob, TuneJobConfig, run_sweep

log = logging.getLogger("fmgnn.main")

STAGES = ("ingest", "augment", "bleg", "tune", "pretrain", "fimp", "report")


@dataclass
class MainJobConfig:
    """Args:
        out_dir: Output directory of the job.
        cohort: A cohort Parquet file to use instead of generating the sample cohort.
        synthetic: The built-in sample cohort (used when ``cohort`` is None).
        stages: Which stages to run, in their fixed order (``ingest`` and ``report`` always run).
        augment, bleg, tune, pretrain, fimp: Each stage's job config; the paths that chain the stages
            (cohort, output folders, the BLEG run the sweep reuses, the pretrained model) are set by the
            job. FIMP's windows and foundation shape follow ``pretrain``'s, since FIMP loads its weights.
        ray: The Ray instance all stages share (the embedded default unless an address is given).
    """

    out_dir: LocalPath = "runs/main"
    cohort: OptionalLocalPath = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bleg: BLEGJobConfig = field(default_factory=BLEGJobConfig)
    tune: TuneJobConfig = field(default_factory=TuneJobConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        synthetic=SyntheticConfig(n_subjects=100, n_timepoints=200, seed=1)))
    fimp: FIMPJobConfig = field(default_factory=FIMPJobConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise InputError(f"stages: unknown {unknown}; choose from {list(STAGES)}")
        if "tune" in self.stages and "bleg" not in self.stages:
            raise InputError("stages: tune sweeps over the bleg stage's run; add bleg")
        if "tune" in self.stages and "bleg" not in self.bleg.variants:
            raise InputError("stages: tune reuses the bleg variant's stage 2; add bleg to bleg.variants")
        same_seed = self.pretrain.synthetic.seed == self.synthetic.seed
        if not self.cohort and SYNTHETIC in corpus_sources(self.pretrain) and same_seed:
            # Subject i of a synthetic cohort depends only on (seed, i): the same seed repeats subjects.
            raise InputError("pretrain.synthetic.seed: equal to synthetic.seed, so the pretraining cohort would "
                             "hold the sample cohort's subjects; choose another seed")
        if "bleg" in self.stages and self.bleg.needs_texts and "augment" not in self.stages:
            raise InputError("stages: the bleg variants align_only and bleg read the augment stage's texts; add "
                             "augment")


def chain_stages(config: MainJobConfig, cohort_path: Path) -> None:
    """Point each stage at the previous stages' outputs inside ``out_dir``.

    A value the user set that the chain would overwrite is refused (named, with where to set it
    instead); a setting equal to the default, or to the chained value, is not the user's choice.
    """
    out = Path(config.out_dir)
    paths = "the main job puts every stage's input and output under out_dir; set out_dir or cohort"
    chained: dict[str, tuple[Any, str]] = {
        "augment.cohort": (str(cohort_path), paths), "bleg.cohort": (str(cohort_path), paths),
        "augment.output": (str(out / "augment"), paths), "bleg.run_dir": (str(out / "bleg"), paths),
        "bleg.texts.output": (str(out / "augment"), paths), "tune.base_run": (str(out / "bleg"), paths),
        "tune.sweep_dir": (str(out / "tune"), paths), "pretrain.output": (str(out / "foundation"), paths),
        "fimp.task": ("fmri", "the main job's FIMP stage is fMRI reconstruction"),
        "fimp.cohort": (str(cohort_path), paths), "fimp.run_dir": (str(out / "fimp"), paths),
        "fimp.fmri.window": (config.pretrain.fmri.window, "FIMP reads the pretrained model's windows; set "
                             "pretrain.fmri.window"),
        "fimp.fmri.n_windows": (config.pretrain.fmri.n_windows, "FIMP reads the pretrained model's windows; set "
                                "pretrain.fmri.n_windows"),
        "fimp.model.foundation": (config.pretrain.foundation, "FIMP's layers are the pretrained model's; set "
                                  "pretrain.foundation.*"),
    }
    if "fimp_pretrained" in config.fimp.models:
        # Not refused: FIMPJobConfig needs a value to accept fimp_pretrained, so configs/main.yaml holds one.
        config.fimp.pretrained = str(out / "foundation")
    defaults = resolve_paths(MainJobConfig())  # compared with resolved settings
    for key, (value, why) in chained.items():
        current, default = dotted_get(config, key), dotted_get(defaults, key)
        if current != default and current != value:
            raise InputError(f"{key}={current!r}: the main job sets it to {value!r} ({why})")
        dotted_set(config, key, value)


def dotted_get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def dotted_set(config: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = getattr(config, part)
    setattr(config, last, value)


def sample_cohort(config: SyntheticConfig, path: Path) -> Path:
    """Generate the sample cohort, or reuse the one at ``path`` made from the same config."""
    if path.is_file():
        provenance = Cohort(path).metadata.provenance
        if provenance.get("config") == asdict(config):
            log.info("reusing the sample cohort at %s (same config)", path)
            return path
    report = ingest_synthetic(path, config)
    for line in report.lines():
        log.info(line)
    return path


def graph_summary(cohort: Cohort, config: GraphConfig) -> dict[str, Any]:
    """Edges, degrees and density of every subject's graph, as the models will see them."""
    counts = []
    for start in range(0, len(cohort), 256):
        fc = torch.as_tensor(cohort.fc(np.arange(start, min(start + 256, len(cohort)))))
        counts.append(edge_mask(fc, config).sum(dim=(1, 2)).numpy())  # directed edges per graph, as built
    n_edges = np.concatenate(counts)
    r = cohort.n_rois
    undirected = (n_edges - (r if config.self_loops else 0)) / 2
    return {
        "n_graphs": len(n_edges), "n_nodes": r, "graph_config": asdict(config),
        "directed_edges_mean": float(n_edges.mean()),
        "density_mean": float((undirected / (r * (r - 1) / 2)).mean()),
        "mean_degree": float((2 * undirected / r).mean()),
    }


def check_cohort(cohort: Cohort, config: MainJobConfig) -> None:
    """What later stages need from the cohort, checked before any of them starts."""
    if "fimp" in config.stages and cohort.timeseries(0) is None:
        raise CohortError(f"{cohort.path}: FC only; the fimp stage (fMRI reconstruction) needs time series. Run "
                          "without it: stages=[ingest,augment,bleg,tune,report]")
    label_counts = cohort.summary()["label_counts"]
    if config.bleg.folds.n_folds > min(label_counts.values()):
        raise CohortError(f"{cohort.path}: bleg.folds.n_folds={config.bleg.folds.n_folds} is more than the "
                          f"smallest class has subjects ({label_counts})")


# Each stage's job, by the name of its section in MainJobConfig: what is free to change on a rerun of a
# stage is free in the main job too.
STAGE_JOBS: dict[str, type[Job]] = {"augment": AugmentJob, "bleg": BLEGJob, "tune": SweepJob, "pretrain": PretrainJob,
                                    "fimp": FIMPJob}


class MainJob(Job[MainJobConfig]):
    """``fmgnn run`` through the job recipe (``pipelines.job``): every stage is a job of its own, run through
    the same recipe in its folder under ``out_dir``."""

    command, tracking_name, config_class = "run", "main", MainJobConfig
    free_settings = (*RUNTIME_SETTINGS, "out_dir", "stages",
                     *(f"{stage}.{key}" for stage, job in STAGE_JOBS.items() for key in job.free_settings))
    metrics_file = "summary.json"

    def __init__(self, config: MainJobConfig) -> None:
        super().__init__(config)
        # A setting the chain would overwrite is refused here, before anything is written; the chained
        # config is what config.yaml holds and what a rerun is compared with.
        chain_stages(self.config, self.cohort_path())

    @property
    def folder(self) -> Path:
        return Path(self.config.out_dir)

    def cohort_path(self) -> Path:
        return Path(self.config.cohort) if self.config.cohort else self.folder / "cohort.parquet"

    def check_inputs(self) -> None:
        if self.config.cohort:  # a bad cohort fails here, before anything in out_dir is rewritten
            self.cohort = Cohort(self.config.cohort)
            check_cohort(self.cohort, self.config)

    def uses_ray(self) -> bool:
        return True  # one instance for every stage (the stages' own recipes then join it)

    def inputs(self) -> dict[str, Any]:
        return {"cohort": str(self.cohort_path())}

    def outputs(self) -> list[str]:
        return ["summary.json", "report.html", "augment", "bleg", "tune", "foundation", "fimp"]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, out_dir = self.config, self.folder
        stages = [s for s in STAGES if s in config.stages or s in ("ingest", "report")]
        timings: dict[str, float] = {}
        summary: dict[str, Any] = {"stages": stages}

        def stage(name: str, run: Callable[[], Any]) -> Any:
            if name not in stages:
                return None
            log.info("[%d/%d] %s ...", stages.index(name) + 1, len(stages), name)
            start = time.monotonic()
            result = run()
            timings[f"{name}_s"] = round(time.monotonic() - start, 1)
            log.info("[%d/%d] %s done in %.0f s", stages.index(name) + 1, len(stages), name, timings[f"{name}_s"])
            return result

        def ingest() -> Cohort:
            path = self.cohort_path()
            if config.cohort:
                cohort = self.cohort  # opened and checked by check_inputs
            else:
                cohort = Cohort(sample_cohort(config.synthetic, path))
                check_cohort(cohort, config)
            summary["cohort"] = cohort.summary()
            summary["graphs"] = graph_summary(cohort, config.bleg.graph)
            atomic_write_json(out_dir / "graphs.json", summary["graphs"])
            log.info("cohort %s: %s; graphs with mean degree %.1f", path, summary["cohort"]["label_counts"],
                     summary["graphs"]["mean_degree"])
            return cohort

        stage("ingest", ingest)
        # Every stage's run nests under this one, in the same store.
        for job in (config.augment, config.bleg, config.tune, config.pretrain, config.fimp):
            job.tracking = tracking.for_child()
        summary["augment"] = stage("augment", lambda: run_augment(config.augment))
        summary["bleg"] = stage("bleg", lambda: run_bleg(config.bleg))
        summary["tune"] = stage("tune", lambda: run_sweep(config.tune))
        summary["pretrain"] = stage("pretrain", lambda: run_pretrain(config.pretrain))
        summary["fimp"] = stage("fimp", lambda: run_fimp(config.fimp))
        summary["timings_s"] = timings
        atomic_write_json(out_dir / "summary.json", summary)
        stage("report", lambda: write_report(out_dir))
        summary["total_s"] = round(sum(timings.values()), 1)
        atomic_write_json(out_dir / "summary.json", summary)
        tracking.log_metrics(timings)
        log.info("main job done in %.0f s; report: %s", summary["total_s"], out_dir / "report.html")
        return summary


def run_main(config: MainJobConfig) -> dict[str, Any]:
    return run_job(MainJob(config))


def main(argv: list[str] | None = None) -> int:
    return job_main("run", __doc__, argv, job=(MainJobConfig, run_main), default_config="configs/main.yaml")


if __name__ == "__main__":
    raise SystemExit(main())
