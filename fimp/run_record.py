"""A ``fmgnn train fimp`` run folder, read and written through one class.

The report and the main job read a FIMP run only through this record; the layout lives here:

    config.yaml  versions.json  metrics.json  plots/
    <model>/seed<s>.json        the model's test result on that seed's split (and its curves)
    <model>/seed<s>/            the trained model: model.pt, model.json, example.npz, result.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fmgnn.io import read_manifest


class FIMPRun:
    """One FIMP run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)

    def model_dir(self, model: str, seed: int) -> Path:
        return self.path / model / f"seed{seed}"

    def seed_result_path(self, model: str, seed: int) -> Path:
        return self.path / model / f"seed{seed}.json"

    def seed_result(self, model: str, seed: int) -> dict[str, Any]:
        return json.loads(self.seed_result_path(model, seed).read_text())

    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def metrics(self) -> dict[str, Any] | None:
        """The run's summary (models, paired differences), or None before the run has finished."""
        path = self.metrics_path()
        return json.loads(path.read_text()) if path.is_file() else None

    def example(self, model: str, seed: int) -> dict[str, np.ndarray]:
        """One test item of the model: target, predicted, mask (and an image's shape)."""
        with np.load(self.model_dir(model, seed) / "example.npz") as example:
            return dict(example)

    def plots_dir(self) -> Path:
        return self.path / "plots"

    def manifest(self) -> dict[str, Any] | None:
        """What made the folder, from what inputs, with which config hash (``fmgnn.io.write_manifest``)."""
        return read_manifest(self.path)


class PretrainRun:
    """One ``fmgnn pretrain`` run: the model folder FIMP loads (``output``, Hugging Face layout) and the
    run's records beside it, so that the model folder holds the model only:

        <output>/        config.json, model.safetensors, fmgnn_pretrain.json
        <output>.run/    config.yaml  versions.json  metrics.json  manifest.json  synthetic.parquet  trained/
    """

    def __init__(self, output: str | Path) -> None:
        self.model_dir = Path(output)
        self.path = self.model_dir.with_name(self.model_dir.name + ".run")

    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def metrics(self) -> dict[str, Any] | None:
        """Held-out MSE and R^2 and the curves, or None before the run has finished."""
        path = self.metrics_path()
        return json.loads(path.read_text()) if path.is_file() else None

    def finished(self) -> bool:
        return self.metrics_path().is_file() and (self.model_dir / "config.json").is_file()

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)
