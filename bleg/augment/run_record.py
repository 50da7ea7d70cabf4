"""A ``fmgnn augment`` output folder, read and written through one class.

The report and the main job read an augmentation output only through this record; the layout lives here:

    parts/part-<run>-<n>.parquet          the answers, one row per subject, prompt version and model
    config.yaml  versions.json            the settings every run into the folder shares (pipelines/job.py)
    summary-<run>.json                    one per run into the folder
    manifest.json                         the latest run's inputs, settings hash and outputs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from bleg.augment.store import part_files, read_augmentations
from fmgnn.io import read_manifest


class AugmentOutput:
    """One augmentation output folder (several runs may have written into it)."""

    def __init__(self, output: str | Path) -> None:
        self.path = Path(output)

    @property
    def parts_dir(self) -> Path:
        return self.path / "parts"

    def has_rows(self) -> bool:
        return bool(part_files(self.parts_dir))

    def rows(self) -> pa.Table:
        """Every answer in the folder (``bleg.augment.store.read_augmentations``)."""
        return read_augmentations(self.path)

    def summary_path(self, run_id: str) -> Path:
        return self.path / f"summary-{run_id}.json"

    def summaries(self) -> list[dict[str, Any]]:
        """The runs' summaries, oldest first."""
        paths = sorted(self.path.glob("summary-*.json"), key=lambda p: p.stat().st_mtime)
        return [json.loads(p.read_text()) for p in paths]

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)
