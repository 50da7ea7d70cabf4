"""A ``fmgnn train bleg`` run folder, read and written through one class.

Other jobs (``tune bleg``, ``predict``, the main job's report) use a BLEG run only through this record:
its config, the stage-2 encoder and the cached teacher targets of a fold, the trained models of a
variant, the per-fold results and the metrics. The folder layout and the teacher cache key live here
and nowhere else:

    config.yaml  versions.json  splits.json  metrics.json  plots/
    <variant>/<split>.json                      per-fold test results
    folds/<split>/stage2/                       stage 2 (encoder/, lm/, stage2.json, result.json)
    folds/<split>/teacher-<bleg|align_only>.parquet
    folds/<split>/<variant>/                    stage 3 (model/, result.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bleg.graph_encoder import GraphTokenEncoder
from bleg.teacher import Pooling, read_targets
from fmgnn.errors import InputError
from fmgnn.io import read_manifest


class BLEGRun:
    """One BLEG run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)

    def fold_dir(self, split: str) -> Path:
        return self.path / "folds" / split

    def stage2_dir(self, split: str) -> Path:
        return self.fold_dir(split) / "stage2"

    def stage3_dir(self, split: str, variant: str) -> Path:
        return self.fold_dir(split) / variant

    def fold_result_path(self, variant: str, split: str) -> Path:
        return self.path / variant / f"{split}.json"

    def config_file(self) -> Path:
        """The run's resolved config (``pipelines.bleg.BLEGJobConfig`` reads it)."""
        path = self.path / "config.yaml"
        if not path.is_file():
            raise InputError(f"{self.path}: not a fmgnn train bleg run (no config.yaml)")
        return path

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def fold_results(self, variant: str) -> list[dict[str, Any]]:
        """Every fold's test result of ``variant`` (predictions included), in split order."""
        return [json.loads(p.read_text()) for p in sorted((self.path / variant).glob("seed*_fold*.json"))]

    # Teacher targets: one Parquet file per fold and reading (tuned LM with graph tokens, or base LM on text).
    @staticmethod
    def teacher_name(tuned: bool) -> str:
        return "bleg" if tuned else "align_only"

    @staticmethod
    def teacher_model(lm_path: str, split: str, tuned: bool) -> str:
        """The cache key's model: a tuned teacher is the base LM after this split's stage 2."""
        return f"{lm_path}+stage2:{split}" if tuned else lm_path

    def teacher_path(self, split: str, tuned: bool) -> Path:
        return self.fold_dir(split) / f"teacher-{self.teacher_name(tuned)}.parquet"

    def teacher_targets(self, split: str, lm_path: str, pooling: Pooling, tuned: bool) -> dict[str, np.ndarray] | None:
        """Cached h_LM of the split's training subjects; None when missing or made with other settings."""
        return read_targets(self.teacher_path(split, tuned), split, self.teacher_model(lm_path, split, tuned), pooling)

    def stage2_encoder(self, split: str) -> GraphTokenEncoder:
        folder = self.stage2_dir(split) / "encoder"
        if not folder.is_dir():
            raise InputError(f"{self.path}: fold {split} has no stage 2 encoder; finish the run first")
        return GraphTokenEncoder.from_pretrained(folder)

    def model_folders(self, variant: str) -> list[Path]:
        """Every fold's trained stage-3 model of ``variant``."""
        folders = sorted(self.path.glob(f"folds/*/{variant}/model"))
        if not folders:
            raise InputError(f"run_dir: {self.path} has no trained {variant!r} models (folds/*/{variant}/model)")
        return folders

    def manifest(self) -> dict[str, Any] | None:
        """What made the folder, from what inputs, with which config hash (``fmgnn.io.write_manifest``)."""
        return read_manifest(self.path)
