"""The augmentation output: a folder of Parquet part files, each written atomically.

A row's key is (scan_id, prompt_version, model); parts written before cohort format 2 name the
column ``subject_id`` (then the unique row id) and read the same. A run skips keys already answered; a kill
loses at most the rows not yet written to a part. Error rows are kept (with the raw output) and
are retried only when asked; once a retry run has written its rows, the retried subjects' older
rows are removed, part by part, atomically, so a finished run leaves one row per key.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmgnn.cohort import CohortError
from fmgnn.io import atomic_path

KEY = ["scan_id", "prompt_version", "model"]

OUTPUT_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("prompt", pa.string()), ("prompt_version", pa.string()),
    ("engine", pa.string()), ("model", pa.string()), ("sampling", pa.string()), ("raw_output", pa.string()),
    ("key_features", pa.list_(pa.string())), ("conclusion", pa.string()), ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()), ("latency_s", pa.float64()), ("attempts", pa.int64()),
    ("error", pa.string()), ("warning", pa.string()), ("run_id", pa.string()),
])


class PartWriter:
    """Numbered part files of one run: ``part-<run_id>-<n>.parquet``."""

    def __init__(self, folder: Path, run_id: str | None = None) -> None:
        self.folder = folder
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        # A run killed mid-write leaves its hidden temp file (never a visible part): clear them.
        # One run writes to a folder at a time, so no live temp file belongs to someone else.
        for leftover in folder.glob(".part-*.tmp"):
            leftover.unlink(missing_ok=True)

    def write(self, table: pa.Table) -> Path:
        table = table.append_column("run_id", pa.array([self.run_id] * table.num_rows, pa.string()))
        table = table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        path = self.folder / f"part-{self.run_id}-{self.count:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.count += 1
        return path


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _same_prompt_and_model(table: pa.Table, prompt_version: str, model: str) -> pa.ChunkedArray:
    return pc.and_(pc.equal(table["prompt_version"], prompt_version), pc.equal(table["model"], model))


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One part file (``columns`` only, when given), its key column named ``scan_id`` whatever its age."""
    try:
        names = pq.read_schema(path).names
        old = "scan_id" not in names and "subject_id" in names  # written before cohort format 2
        wanted = None if columns is None else [("subject_id" if old and c == "scan_id" else c) for c in columns]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as err:
        raise CohortError(f"{path}: unreadable part file ({err}); move it away to continue") from None
    return table.rename_columns(["scan_id" if old and c == "subject_id" else c for c in table.column_names])


def read_keys(folder: Path, prompt_version: str, model: str) -> tuple[set[str], set[str]]:
    """Scans already answered, and scans with only error rows, for this prompt version and model."""
    done: set[str] = set()
    failed: set[str] = set()
    for path in part_files(folder):
        table = read_part(path, ["scan_id", "prompt_version", "model", "error"])
        table = table.filter(_same_prompt_and_model(table, prompt_version, model))
        ok = pc.is_null(table["error"])
        done.update(table.filter(ok)["scan_id"].to_pylist())
        failed.update(table.filter(pc.invert(ok))["scan_id"].to_pylist())
    return done, failed - done


def drop_replaced_rows(folder: Path, subjects: set[str], prompt_version: str, model: str, run_id: str) -> int:
    """After a retry run: remove older rows of the retried subjects (their new rows are in ``run_id``'s parts)."""
    if not subjects:
        return 0
    retried = pa.array(sorted(subjects), pa.string())
    removed = 0
    for path in part_files(folder):
        if path.name.startswith(f"part-{run_id}-"):
            continue
        table = read_part(path)
        stale = pc.and_(pc.is_in(table["scan_id"], retried), _same_prompt_and_model(table, prompt_version, model))
        n = pc.sum(stale).as_py() or 0
        if n:
            with atomic_path(path) as tmp:
                pq.write_table(table.filter(pc.invert(stale)), tmp)
            removed += n
    return removed


def read_augmentations(output: str | Path) -> pa.Table:
    """All rows of an augmentation output folder (its ``parts/``)."""
    paths = part_files(Path(output) / "parts")
    if not paths:
        raise CohortError(f"{output}: no augmentation part files in parts/ (run `fmgnn augment` first)")
    tables = []
    for path in paths:
        table = read_part(path)
        missing = [name for name in OUTPUT_SCHEMA.names if name not in table.column_names]
        if missing:
            raise CohortError(f"{path}: not an augmentation part file (no column {', '.join(missing)})")
        tables.append(table.select(OUTPUT_SCHEMA.names))
    return pa.concat_tables(tables)
