"""A ``fmgnn tune bleg`` sweep folder, read and written through one class.

The report and the main job read a sweep only through this record; the layout lives here:

    config.yaml  versions.json  summary.json  trials.json  results.parquet  results.csv  best.yaml
    plots/importance.json  plots/*.png
    nested/<split>/  nested/<split>.json        the nested estimate's outer folds (retrain: true)
    tuned/                                      the run_dir best.yaml names
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmgnn.io import read_manifest


class SweepRun:
    """One sweep folder."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = Path(sweep_dir)

    def _json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def summary(self) -> dict[str, Any] | None:
        """Best parameters and loss, trial counts, the nested estimate; None before the sweep has finished."""
        return self._json("summary.json")

    def trials_path(self) -> Path:
        return self.path / "trials.json"

    def trials(self) -> dict[str, dict[str, Any]]:
        """Each trial's parameters and validation curve."""
        return self._json("trials.json") or {}

    def plots_dir(self) -> Path:
        return self.path / "plots"

    def importance(self) -> dict[str, float] | None:
        return self._json("plots/importance.json")

    def best_config_path(self) -> Path:
        return self.path / "best.yaml"

    def tuned_run_dir(self) -> Path:
        return self.path / "tuned"

    def nested_dir(self, split: str) -> Path:
        return self.path / "nested" / split

    def nested_result_path(self, split: str) -> Path:
        return self.path / "nested" / f"{split}.json"

    def results_paths(self) -> tuple[Path, Path]:
        return self.path / "results.parquet", self.path / "results.csv"

    def manifest(self) -> dict[str, Any] | None:
        """What made the folder, from what inputs, with which config hash (``fmgnn.io.write_manifest``)."""
        return read_manifest(self.path)
