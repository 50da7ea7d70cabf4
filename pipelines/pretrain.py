"""``fmgnn pretrain``: a BrainLM-style masked autoencoder over ROI time-series windows, under Ray Train.

    fmgnn pretrain --config configs/pretrain.yaml output=models/brain-fm
    fmgnn pretrain ... "corpus=[cohorts/nyu.parquet,cohorts/other.parquet,pkg://brainfc/data/rest01]"
    fmgnn pretrain ... init=/models/brainlm      # continue pretraining a downloaded BrainLM (ViTMAE folder)

The corpus (``fimp/tasks/corpus.py``) is every region of every scan and every vertex of every recording
given, each a sequence of windows (tokens); a share of windows is hidden behind a mask token and the
transformer reconstructs them from the sequence's visible windows (no graph). The model is
saved in Hugging Face ViT format (``fimp/hf_export.py``): ``fmgnn train fimp pretrained=<output>``
initialises FIMP from it, and ``transformers.AutoModel.from_pretrained(output)`` loads it.
A rerun with the same config returns the finished model; an interrupted one resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from fimp.foundation import FoundationConfig
from fimp.hf_export import load_foundation, save_foundation
from fimp.reconstruction import ReconstructionConfig, TokenModel
from fimp.run_record import PretrainRun
from fimp.tasks.fmri import FMRITaskConfig
from fimp.tasks.corpus import CorpusIndex, index_corpus
from fimp.tasks.recording import BRAINSPACE_FSA5
from fimp.train_corpus_reconstruction import CorpusReconstructionSpec, CorpusReconstructionTask
from fimp.train_reconstruction import ReconstructionTrainConfig
from fmgnn.config import LocalPath, OptionalLocalPath, OptionalModelPath, PathOrKeyword, to_dict
from fmgnn.engine import read_result
from fmgnn.errors import InputError
from fmgnn.io import atomic_dir, atomic_write_json
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from fmgnn.tracking import JobRun, TrackingConfig
from pipelines.command import job_main
from pipelines.fimp import split_groups
from pipelines.job import Job, run_job
from pipelines.ray_session import RayConfig
from pipelines.trainers import resolve_storage_path, run_stage

log = logging.getLogger("fmgnn.pretrain")


@dataclass
class PretrainConfig:
    """Args:
        corpus: What to pretrain on, any mix of cohort Parquet files with time series, ``parcels`` folders and
            ``.lh.mgz`` surface recordings (``pkg://`` paths read files shipped in Python packages), and
            ``synthetic``, the built-in cohort (``synthetic``) written into the run folder. Empty: the real
            recording that ships with an installed package (brainspace's fsaverage5 recording) when there
            is one, the built-in cohort otherwise; the run record names what was used.
        synthetic: Size of the built-in cohort.
        output: Folder of the pretrained model (Hugging Face format).
        init: A foundation model folder (ViT/ViTMAE, BrainLM) to continue from; None: random weights.
        name: Ray Train run name (a rerun with the same name resumes).
        val_fraction: Subjects held out to pick the epoch (every scan of a subject on one side).
        train_subjects: Pretrain on this many of the training subjects (drawn with ``seed``; the held-out
            subjects stay the same); 0: all. For curves of transfer against the amount of pretraining data.
        position: Token positions (``ReconstructionConfig.position``): ``sinusoidal``, a fixed table, so the
            model runs on recordings with any number of windows; ``learned`` ties it to ``fmri.n_windows``.
        seed: Split and initialisation seed.
        fmri: Windows and masking (BrainLM: 20 points per window, mask ratio 0.2).
        foundation: Transformer shape (BrainLM small: hidden 256, 4 layers, 4 heads, MLP 1024).
        optim: Optimisation.
        storage_path: Checkpoints (local or s3://, gs://); None: ``<output>.ray_results``.
    """

    corpus: list[PathOrKeyword] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_subjects=200, n_timepoints=200))
    output: LocalPath = "models/brain-fm"
    init: OptionalModelPath = None
    name: str = "pretrain"
    val_fraction: float = 0.1
    train_subjects: int = 0
    position: Literal["learned", "sinusoidal"] = "sinusoidal"
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
    return load_foundation(TokenModel(model_config), config.init).state_dict()


def model_settings(config: PretrainConfig) -> dict[str, Any]:
    """The settings that decide the pretrained model (not where its runs are tracked or how Ray runs it)."""
    return {k: v for k, v in to_dict(config).items() if k not in ("tracking", "ray", "storage_path")}


def subject_subset(subjects: Sequence[str], scans: list[int], n_subjects: int, seed: int) -> list[int]:
    """The scans of ``n_subjects`` of the subjects that ``scans`` cover, drawn with ``seed``."""
    covered = sorted({subjects[i] for i in scans})
    if n_subjects > len(covered):
        raise InputError(f"train_subjects={n_subjects}: the training part has {len(covered)} subjects")
    chosen = set(np.random.default_rng(seed).choice(covered, size=n_subjects, replace=False).tolist())
    return [i for i in scans if subjects[i] in chosen]


def split_units(index: CorpusIndex, seed: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Training and held-out units, whole groups (subjects) on one side: the groups drawn as ``split_scans``
    draws subjects, so that the held-out subjects are those of the same seed before the corpus was indexed."""
    train, val, _ = split_groups(index.groups, seed, val_fraction, 0.0)
    return train, val


SYNTHETIC = "synthetic"  # a corpus entry: the built-in cohort
SHIPPED_RECORDING = BRAINSPACE_FSA5  # the real recording a default install ships (brainspace, --no-deps)


def shipped_recording_installed() -> bool:
    return importlib.util.find_spec(SHIPPED_RECORDING.removeprefix("pkg://").split("/")[0]) is not None


def corpus_sources(config: PretrainConfig) -> list[str]:
    """The corpus as given, the empty default made explicit."""
    return config.corpus or ([SHIPPED_RECORDING] if shipped_recording_installed() else [SYNTHETIC])


class PretrainJob(Job[PretrainConfig]):
    """``fmgnn pretrain`` through the job recipe (``pipelines.job``); its folder is the run record beside the
    model folder (``PretrainRun``), so that ``output`` holds the model only."""

    command, tracking_name, config_class = "pretrain", "pretrain", PretrainConfig

    @property
    def folder(self) -> Path:
        return PretrainRun(self.config.output).path

    @property
    def sources(self) -> list[str]:
        return corpus_sources(self.config)

    @property
    def synthetic_path(self) -> Path:
        return self.folder / "synthetic.parquet"

    def corpus_paths(self) -> list[str]:
        return [str(self.synthetic_path) if p == SYNTHETIC else p for p in self.sources]

    def check_inputs(self) -> None:
        # Checked before anything is written (one streamed pass: the index, not the sequences); the built-in
        # cohort is written by the run itself, and read then. A finished run returns its record without
        # the corpus, so a rerun does not read it.
        finished = PretrainRun(self.config.output).finished()
        self.index = None if SYNTHETIC in self.sources or finished else self.index_corpus()
        if self.index is not None:
            train, _ = self.split(self.index)  # train_subjects larger than the training part is refused here
            if len(train) < self.config.ray.num_workers:  # a worker would have no sequences of its own
                raise InputError(f"ray.num_workers={self.config.ray.num_workers}: the corpus's training part has "
                                 f"{len(train)} units (scans, or nodes of a one-subject recording)")

    def split(self, index: CorpusIndex) -> tuple[list[int], list[int]]:
        """Training and held-out units: subjects apart, ``train_subjects`` of the training ones."""
        config = self.config
        train, val = split_units(index, config.seed, config.val_fraction)
        if config.train_subjects:
            train = subject_subset(index.subjects, train, config.train_subjects, config.seed)
        return train, val

    def index_corpus(self) -> CorpusIndex:
        return index_corpus(self.corpus_paths(), self.config.fmri.window, self.config.fmri.n_windows, "corpus")

    def inputs(self) -> dict[str, Any]:
        return {"corpus": self.corpus_paths(), "init": self.config.init}

    def outputs(self) -> list[str]:
        return [PretrainRun(self.config.output).metrics_path().name, self.config.output]

    def run(self, tracking: JobRun) -> dict[str, Any]:
        config, record = self.config, PretrainRun(self.config.output)
        if record.finished():  # the recipe has checked that it was made with these settings
            log.info("%s: already pretrained with this config", record.model_dir)
            return record.metrics()
        if SYNTHETIC in self.sources and not self.synthetic_path.is_file():
            ingest_synthetic(self.synthetic_path, config.synthetic)
        index = self.index or self.index_corpus()
        train, val = self.split(index)
        train_subjects, train_sequences = len(set(index.subjects[train])), index.sequences(train)
        log.info("pretraining on %d sequences of %d subjects, %d held out", train_sequences, train_subjects,
                 index.sequences(val))
        model_config = ReconstructionConfig(kind="foundation", n_tokens=config.fmri.n_windows,
                                            token_values=config.fmri.window, foundation=config.foundation,
                                            position=config.position)
        # The workers read their own units' sequences; the task's spec carries the index only.
        spec = CorpusReconstructionSpec(index, train, val, config.fmri.mask_ratio, config.fmri.mask_span, model_config,
                                        config.optim, initial_state(config, model_config), config.seed)
        # The settings' hash in the run name: a checkpoint of other settings is never resumed.
        digest = hashlib.sha256(json.dumps(model_settings(config), sort_keys=True).encode()).hexdigest()[:8]
        task = CorpusReconstructionTask(f"{config.name}-{digest}", spec, output=self.folder / "trained")
        run_stage([task], task.name, config.ray, resolve_storage_path(config.storage_path, self.folder))
        metrics = read_result(task.output)
        model = TokenModel(model_config)
        model.load_state_dict(torch.load(task.output / "model.pt", map_location="cpu", weights_only=True))
        with atomic_dir(record.model_dir) as tmp:
            save_foundation(model, tmp)
            (tmp / "fmgnn_pretrain.json").write_text(json.dumps({
                "corpus": [asdict(source) for source in index.sources], "fmri": config.fmri.__dict__,
                "init": config.init, "position": config.position, "train_sequences": train_sequences,
                "train_subjects": train_subjects, "val_sequences": index.sequences(val),
                "val_mse": metrics["test_mse"], "val_r2": metrics["test_r2"],
                "best_epoch": metrics["best_epoch"]}, indent=2))
        summary = {"output": str(record.model_dir), "val_mse": metrics["test_mse"], "val_r2": metrics["test_r2"],
                   "corpus": [asdict(source) for source in index.sources],
                   "train_subjects": train_subjects, "train_sequences": train_sequences,
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
