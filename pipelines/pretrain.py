"""``fmgnn pretrain``: a BrainLM-style masked autoencoder over ROI time-series windows, under Ray Train.

    fmgnn pretrain --config configs/pretrain.yaml output=models/brain-fm
    fmgnn pretrain ... init=/models/brainlm      # continue pretraining a downloaded BrainLM (ViTMAE folder)

Each region's series is cut into windows (tokens); a share of windows is hidden behind a mask token
and the transformer reconstructs them from the region's visible windows (no graph). The model is
saved in Hugging Face ViT format (``fimp/hf_export.py``): ``fmgnn train fimp pretrained=<output>``
initialises FIMP from it, and ``transformers.AutoModel.from_pretrained(output)`` loads it.
A rerun with the same config returns the finished model; an interrupted one resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fimp.foundation import FoundationConfig
from fimp.hf_export import load_token_weights, save_foundation
from fimp.reconstruction import ReconstructionConfig, TokenModel
from fimp.run_record import PretrainRun
from fimp.tasks.fmri import FMRITaskConfig
from fimp.train_reconstruction import ReconstructionSpec, ReconstructionTask, ReconstructionTrainConfig
from fimp.weights import load_foundation_weights
from fmgnn.cohort import Cohort
from fmgnn.config import LocalPath, OptionalLocalPath, OptionalModelPath, to_dict
from fmgnn.engine import read_result
from fmgnn.io import atomic_dir, atomic_write_json
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.command import job_main
from pipelines.fimp import check_series_length, split_scans
from pipelines.job import Job, run_job
from pipelines.ray_session import RayConfig
from pipelines.trainers import resolve_storage_path, run_stage

log = logging.getLogger("fmgnn.pretrain")


@dataclass
class PretrainConfig:
    """Args:
        cohort: Cohort with time series; empty: a synthetic cohort (``synthetic``) written into output.
        synthetic: Size of the built-in cohort.
        output: Folder of the pretrained model (Hugging Face format).
        init: A foundation model folder (ViT/ViTMAE, BrainLM) to continue from; None: random weights.
        name: Ray Train run name (a rerun with the same name resumes).
        val_fraction: Scans held out to pick the epoch.
        seed: Split and initialisation seed.
        fmri: Windows and masking (BrainLM: 20 points per window, mask ratio 0.2).
        foundation: Transformer shape (BrainLM small: hidden 256, 4 layers, 4 heads, MLP 1024).
        optim: Optimisation.
        storage_path: Checkpoints (local or s3://, gs://); None: ``<output>.ray_results``.
    """

    cohort: LocalPath = ""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_subjects=200, n_timepoints=200))
    output: LocalPath = "models/brain-fm"
    init: OptionalModelPath = None
    name: str = "pretrain"
    val_fraction: float = 0.1
    seed: int = 0
    fmri: FMRITaskConfig = field(default_factory=FMRITaskConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    storage_path: OptionalLocalPath = None
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def initial_state(config: PretrainConfig, model_config: ReconstructionConfig) -> dict[str, torch.Tensor] | None:
    if not config.init:
        return None
    from transformers import AutoModel

    model = TokenModel(model_config)
    load_foundation_weights(model.convs[0], AutoModel.from_pretrained(config.init).state_dict(), "vit")
    tokens = load_token_weights(config.init)
    if tokens is not None:
        model.load_state_dict(tokens, strict=False)
    return model.state_dict()


def model_settings(config: PretrainConfig) -> dict[str, Any]:
    """The settings that decide the pretrained model (not where its runs are tracked or how Ray runs it)."""
    return {k: v for k, v in to_dict(config).items() if k not in ("tracking", "ray", "storage_path")}


class PretrainJob(Job[PretrainConfig]):
    """``fmgnn pretrain`` through the job recipe (``pipelines.job``); its folder is the run record beside the
    model folder (``PretrainRun``), so that ``output`` holds the model only."""

    command, tracking_name, config_class = "pretrain", "pretrain", PretrainConfig

    @property
    def folder(self) -> Path:
        return PretrainRun(self.config.output).path

    def check_inputs(self) -> None:
        if self.config.cohort:  # the built-in cohort is written by the run itself
            check_series_length(Cohort(self.config.cohort), self.config.fmri)

    def inputs(self) -> dict[str, Any]:
        return {"cohort": self.cohort_path(), "init": self.config.init}

    def outputs(self) -> list[str]:
        return [PretrainRun(self.config.output).metrics_path().name, self.config.output]

    def cohort_path(self) -> Path:
        return Path(self.config.cohort) if self.config.cohort else self.folder / "synthetic.parquet"

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, record = self.config, PretrainRun(self.config.output)
        if record.finished():  # the recipe has checked that it was made with these settings
            log.info("%s: already pretrained with this config", record.model_dir)
            return record.metrics()
        cohort_path = self.cohort_path()
        if not config.cohort and not cohort_path.is_file():
            ingest_synthetic(cohort_path, config.synthetic)
        cohort = Cohort(cohort_path)
        check_series_length(cohort, config.fmri)
        train, val, _ = split_scans(cohort.subject_ids(), config.seed, config.val_fraction, 0.0)
        model_config = ReconstructionConfig(kind="foundation", n_tokens=config.fmri.n_windows,
                                            token_values=config.fmri.window, foundation=config.foundation)
        # Pretraining has no test scans: the held-out validation scans are also what is reported.
        spec = ReconstructionSpec(str(cohort_path), train, val, val, config.fmri, model_config, config.optim,
                                  initial_state(config, model_config), config.seed)
        # The settings' hash in the run name: a checkpoint of other settings is never resumed.
        digest = hashlib.sha256(json.dumps(model_settings(config), sort_keys=True).encode()).hexdigest()[:8]
        task = ReconstructionTask(f"{config.name}-{digest}", spec, output=self.folder / "trained")
        run_stage([task], task.name, config.ray, resolve_storage_path(config.storage_path, self.folder))
        metrics = read_result(task.output)
        model = TokenModel(model_config)
        model.load_state_dict(torch.load(task.output / "model.pt", map_location="cpu", weights_only=True))
        with atomic_dir(record.model_dir) as tmp:
            save_foundation(model, tmp)
            (tmp / "fmgnn_pretrain.json").write_text(json.dumps({
                "cohort": str(cohort_path), "fmri": config.fmri.__dict__, "init": config.init,
                "val_mse": metrics["test_mse"], "val_r2": metrics["test_r2"],
                "best_epoch": metrics["best_epoch"]}, indent=2))
        summary = {"output": str(record.model_dir), "val_mse": metrics["test_mse"], "val_r2": metrics["test_r2"],
                   "epochs": len(metrics["history"]), "history": metrics["history"]}
        atomic_write_json(record.metrics_path(), summary)
        tracking.log_tasks([task])
        log.info("pretrained foundation model -> %s (held-out masked-window MSE %.4f, R^2 %.3f)", record.model_dir,
                 summary["val_mse"], summary["val_r2"])
        return summary


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    return run_job(PretrainJob(config))


def main(argv: list[str] | None = None) -> int:
    return job_main("pretrain", __doc__, argv, job=(PretrainConfig, run_pretrain))


if __name__ == "__main__":
    raise SystemExit(main())
