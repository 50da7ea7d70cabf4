"""The cohort data model: one Parquet file, one row per scan, cohort facts in the schema metadata.

Format version 2 (``COHORT_FORMAT_VERSION``). Columns:

==============  =====================  ==================================================
column          Arrow type             meaning
==============  =====================  ==================================================
scan_id         string, unique         the row's id (unique within the cohort)
subject_id      string                 the subject; repeats for sessions and runs
cohort          string                 cohort name (same on every row)
label           int64                  class index into ``label_names``
label_name      string                 ``label_names[label]``
n_timepoints    int32, nullable        T, when the row has a time series
timeseries      list<float32>, null.   ROI time series, row-major ``(T, R)`` flattened
fc_triu         list<float32>, null.   FC upper triangle without diagonal, order of
                                       ``numpy.triu_indices(R, 1)``: ``R (R - 1) / 2`` values
age             float64, nullable      years
sex             string, nullable       as the source writes it (``F``/``M``...)
site            string, nullable       acquisition site
imputed_rois    list<int32>            regions whose values were imputed for this scan
==============  =====================  ==================================================

At least one of ``timeseries`` and ``fc_triu`` is set on every row. Version-1 files (no ``scan_id``:
``subject_id`` was the unique row id, one scan per subject) still read, with ``scan_id = subject_id``.
The metadata's ``connectivity`` says what ``fc_triu`` holds: ``correlation`` (Pearson r, in [-1, 1]) or
``weights`` (non-negative edge weights, e.g. DTI streamline counts). The schema metadata key
``fmgnn.cohort`` (Parquet key-value metadata in the file footer, written when the file is
closed) holds :class:`CohortMetadata` as JSON: atlas, ROI names (and coordinates),
task, label names, networks and provenance (source file, hash, adapter, what was imputed).

Files are written through :class:`CohortWriter`, which validates every row and moves the
finished file into place atomically, so a failed ingest leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmgnn.errors import InputError
from fmgnn.io import temp_path_beside

COHORT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
METADATA_KEY = b"fmgnn.cohort"
CONNECTIVITY_KINDS = ("correlation", "weights")

COHORT_SCHEMA = pa.schema(
    [
        pa.field("scan_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("cohort", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("label_name", pa.string(), nullable=False),
        pa.field("n_timepoints", pa.int32()),
        pa.field("timeseries", pa.list_(pa.float32())),
        pa.field("fc_triu", pa.list_(pa.float32())),
        pa.field("age", pa.float64()),
        pa.field("sex", pa.string()),
        pa.field("site", pa.string()),
        pa.field("imputed_rois", pa.list_(pa.int32()), nullable=False),
    ]
)

# Correlations computed in float32 can overshoot 1 by a few ulps.
_FC_RANGE_TOLERANCE = 1e-4


class CohortError(InputError):
    """Bad cohort input; the message names the file, the subject and the field."""


@dataclass
class CohortMetadata:
    """Facts that hold for the whole cohort, stored in the Parquet schema metadata.

    Args:
        name: Cohort name, e.g. ``"nmda_aal"``.
        atlas: Parcellation name, e.g. ``"AAL-90"``.
        roi_names: Region names in column order; ``R = len(roi_names)``.
        label_names: Class names; row ``label`` indexes this list.
        task: What is classified, in words, e.g. ``"healthy control vs anti-NMDAR encephalitis"``.
        roi_coords: Optional ``R x 3`` MNI centroids.
        networks: Optional groups of region indices (lobes, resting-state networks).
        provenance: Where the data came from and what ingest did to it.
        format_version: Version of this data model.
        connectivity: What the FC values are: ``correlation`` (in [-1, 1]) or ``weights`` (non-negative,
            e.g. structural streamline counts); graphs keep the strongest edges of either.
    """

    name: str
    atlas: str
    roi_names: list[str]
    label_names: list[str]
    task: str
    roi_coords: list[list[float]] | None = None
    networks: dict[str, list[int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = COHORT_FORMAT_VERSION
    connectivity: str = "correlation"

    @property
    def n_rois(self) -> int:
        return len(self.roi_names)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "cohort") -> CohortMetadata:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise CohortError(f"{where}: schema metadata '{METADATA_KEY.decode()}' is invalid: {err}") from None

    def check(self, where: str) -> None:
        if self.format_version not in READABLE_FORMAT_VERSIONS:
            raise CohortError(
                f"{where}: cohort format version {self.format_version} is not supported "
                f"(this fmgnn reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
            )
        if self.connectivity not in CONNECTIVITY_KINDS:
            raise CohortError(f"{where}: metadata field connectivity is {self.connectivity!r}, expected one of "
                              f"{list(CONNECTIVITY_KINDS)}")
        if len(self.label_names) < 1:
            raise CohortError(f"{where}: metadata field label_names is empty")
        if len(set(self.roi_names)) != len(self.roi_names):
            raise CohortError(f"{where}: metadata field roi_names has duplicates")
        if self.roi_coords is not None and np.shape(self.roi_coords) != (self.n_rois, 3):
            raise CohortError(
                f"{where}: metadata field roi_coords has shape {np.shape(self.roi_coords)}, "
                f"expected ({self.n_rois}, 3)"
            )


@dataclass
class Scan:
    """One row of a cohort before it is written. Arrays are validated by :class:`CohortWriter`.

    Shapes: ``timeseries`` is ``(T, R)``; ``fc`` is either ``(R, R)`` (symmetric) or the
    ``R (R - 1) / 2`` upper triangle. ``scan_id`` defaults to ``subject_id`` (one scan per subject).
    """

    subject_id: str
    label: int
    timeseries: np.ndarray | None = None
    fc: np.ndarray | None = None
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    imputed_rois: Sequence[int] = ()
    scan_id: str | None = None


def fc_to_triu(fc: np.ndarray, n_rois: int, where: str) -> np.ndarray:
    """A full symmetric ``(R, R)`` FC, or its upper triangle, as the ``R (R - 1) / 2`` triangle."""
    fc = np.asarray(fc)
    n_pairs = n_rois * (n_rois - 1) // 2
    if fc.ndim == 1:
        if fc.shape[0] != n_pairs:
            raise CohortError(f"{where}: field fc has {fc.shape[0]} values, expected {n_pairs} for R={n_rois}")
        return fc.astype(np.float32)
    if fc.shape != (n_rois, n_rois):
        raise CohortError(f"{where}: field fc has shape {fc.shape}, expected ({n_rois}, {n_rois})")
    if not np.allclose(fc, fc.T, atol=1e-5, equal_nan=True):
        i, j = np.unravel_index(np.nanargmax(np.abs(fc - fc.T)), fc.shape)
        raise CohortError(
            f"{where}: field fc is not symmetric: fc[{i},{j}]={fc[i, j]:.6g} but fc[{j},{i}]={fc[j, i]:.6g}"
        )
    return fc[np.triu_indices(n_rois, 1)].astype(np.float32)


def triu_to_fc(triu: np.ndarray, n_rois: int, diagonal: float = 1.0) -> np.ndarray:
    """Inverse of :func:`fc_to_triu` over a batch: ``(..., R (R - 1) / 2)`` -> ``(..., R, R)``."""
    triu = np.asarray(triu)
    rows, cols = np.triu_indices(n_rois, 1)
    fc = np.full(triu.shape[:-1] + (n_rois, n_rois), diagonal, dtype=triu.dtype)
    fc[..., rows, cols] = triu
    fc[..., cols, rows] = triu
    return fc


def scan_fc(fc_triu: np.ndarray | None, timeseries: np.ndarray | None, n_rois: int, where: str) -> np.ndarray:
    """One scan's FC ``(R, R)``: its stored upper triangle, or Pearson FC of its (flattened) time series."""
    if fc_triu is not None:
        values = np.asarray(fc_triu, dtype=np.float32)
        n_pairs = n_rois * (n_rois - 1) // 2
        if values.shape[0] != n_pairs:
            raise CohortError(f"{where}: field fc_triu has {values.shape[0]} values, expected {n_pairs}")
        return triu_to_fc(values, n_rois)
    from fmgnn.graphs import pearson_fc

    return pearson_fc(np.asarray(timeseries, dtype=np.float32).reshape(-1, n_rois))  # (T, R) -> (R, R)


class CohortWriter:
    """Validate scans and stream them into a cohort Parquet file, atomically.

    Rows go to a temp file beside ``path``; ``close()`` checks the cohort as a whole and moves
    the file into place. Any error (or leaving the ``with`` block by an exception) deletes the
    temp file, so ``path`` is either the complete cohort or untouched.

    Args:
        path: Destination ``.parquet`` file.
        metadata: Cohort metadata; ``metadata.n_rois`` fixes R for every row.
        source: Name of the input, for error messages (a file path, usually).
        row_group_size: Rows per Parquet row group, which bounds the writer's memory.
    """

    def __init__(self, path: str | Path, metadata: CohortMetadata, source: str = "input",
                 row_group_size: int = 256) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.source = source
        self.row_group_size = row_group_size
        metadata.check(source)
        self.schema = COHORT_SCHEMA
        self._tmp = temp_path_beside(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self._pending: list[dict[str, Any]] = []
        self._seen_ids: set[str] = set()
        self.scans_per_subject: Counter[str] = Counter()
        self.label_counts = np.zeros(len(metadata.label_names), dtype=np.int64)

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def set_provenance(self, provenance: dict[str, Any]) -> None:
        """Record where the rows came from; stored with the metadata when the file is closed."""
        self.metadata.provenance = provenance

    @property
    def n_written(self) -> int:
        return len(self._seen_ids)

    def add(self, scan: Scan) -> None:
        self._pending.append(self._validate(scan))
        if len(self._pending) >= self.row_group_size:
            self._flush()

    def _validate(self, scan: Scan) -> dict[str, Any]:
        subject = str(scan.subject_id).strip()
        sid = subject if scan.scan_id is None else str(scan.scan_id).strip()
        where = f"{self.source}: {'subject' if scan.scan_id is None else 'scan'} {sid or '<empty>'}"
        n_rois = self.metadata.n_rois
        if not subject:
            raise CohortError(f"{self.source}: scan {sid or '<empty>'} has an empty subject_id")
        if not sid:
            raise CohortError(f"{self.source}: subject {subject}: a row has an empty scan_id")
        if sid in self._seen_ids:
            raise CohortError(f"{where}: duplicate scan_id (give each session or run its own scan_id)"
                              if scan.scan_id is not None else f"{where}: duplicate subject_id (several scans of "
                              "one subject need a scan_id each)")
        label = int(scan.label)
        if not 0 <= label < len(self.metadata.label_names):
            raise CohortError(
                f"{where}: field label is {scan.label}, expected 0..{len(self.metadata.label_names) - 1} "
                f"({', '.join(self.metadata.label_names)})"
            )
        if scan.timeseries is None and scan.fc is None:
            raise CohortError(f"{where}: neither timeseries nor fc is given")
        row: dict[str, Any] = {
            "scan_id": sid, "subject_id": subject, "cohort": self.metadata.name, "label": label,
            "label_name": self.metadata.label_names[label], "n_timepoints": None,
            "timeseries": None, "fc_triu": None,
            "age": None if scan.age is None or np.isnan(scan.age) else float(scan.age),
            "sex": scan.sex, "site": scan.site,
            "imputed_rois": [int(r) for r in scan.imputed_rois],
        }
        if scan.timeseries is not None:
            ts = np.asarray(scan.timeseries, dtype=np.float32)
            if ts.ndim != 2 or ts.shape[1] != n_rois:
                raise CohortError(f"{where}: field timeseries has shape {ts.shape}, expected (T, {n_rois})")
            if ts.shape[0] < 3:
                raise CohortError(f"{where}: field timeseries has {ts.shape[0]} time points, need at least 3")
            _check_finite(ts, f"{where}: field timeseries")
            row["n_timepoints"] = ts.shape[0]
            row["timeseries"] = ts.ravel()
        if scan.fc is not None:
            triu = fc_to_triu(scan.fc, n_rois, where)
            _check_finite(triu, f"{where}: field fc")
            if self.metadata.connectivity == "weights":
                if triu.size and float(triu.min()) < 0:
                    raise CohortError(f"{where}: field fc holds {float(triu.min()):.4g}, expected non-negative "
                                      "weights (connectivity: weights)")
            else:
                worst = float(np.max(np.abs(triu))) if triu.size else 0.0
                if worst > 1 + _FC_RANGE_TOLERANCE:
                    raise CohortError(f"{where}: field fc holds |r| = {worst:.4g}, expected correlations in [-1, 1] "
                                      "(connectivity: correlation; structural weights need connectivity=weights)")
            row["fc_triu"] = triu
        self._seen_ids.add(sid)
        self.scans_per_subject[subject] += 1
        self.label_counts[label] += 1
        return row

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = {name: [row[name] for row in self._pending] for name in self.schema.names}
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self._pending.clear()

    def close(self) -> None:
        try:
            self._flush()
            self._writer.add_key_value_metadata({METADATA_KEY: self.metadata.to_json()})
            self._writer.close()
            if self.n_written == 0:
                raise CohortError(f"{self.source}: the cohort is empty (no scans were read)")
            os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def _check_finite(values: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), values.shape)
        kind = "NaN" if np.isnan(values[index]) else "inf"
        raise CohortError(f"{where} holds {int(bad.sum())} NaN/inf values (first: {kind} at index {index})")


REQUIRED_COLUMNS = ("subject_id", "label", "label_name", "timeseries", "fc_triu")


class Cohort:
    """A cohort Parquet file opened for reading. Rows are read lazily and on demand.

    Shapes: :meth:`fc` returns ``(N, R, R)`` float32; :meth:`timeseries` returns ``(T, R)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CohortError(f"{self.path}: cohort file not found")
        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as err:
            raise CohortError(f"{self.path}: not a readable Parquet file, or truncated ({err})") from None
        schema = parquet.schema_arrow
        raw = (parquet.metadata.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise CohortError(
                f"{self.path}: no '{METADATA_KEY.decode()}' schema metadata; not an fmgnn cohort "
                "(create one with `fmgnn ingest`)"
            )
        self.metadata = CohortMetadata.from_json(raw, str(self.path))
        self.metadata.check(str(self.path))
        required = [*REQUIRED_COLUMNS, "scan_id"] if self.metadata.format_version >= 2 else REQUIRED_COLUMNS
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise CohortError(f"{self.path}: missing column(s) {', '.join(missing)}")
        for name in required:  # a file written by other tools may carry the names with other types
            expected = COHORT_SCHEMA.field(name).type
            if not schema.field(name).type.equals(expected):
                raise CohortError(f"{self.path}: column {name} is {schema.field(name).type}, expected {expected}")
        self.schema = schema
        self.num_rows = parquet.metadata.num_rows
        if self.num_rows == 0:
            raise CohortError(f"{self.path}: the cohort is empty (no subjects)")
        self._table: pa.Table | None = None
        self._starts: np.ndarray | None = None

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            try:
                self._table = pq.read_table(self.path)
            except (pa.ArrowInvalid, OSError) as err:
                raise CohortError(f"{self.path}: the file is corrupt or truncated ({err})") from None
        return self._table

    def __len__(self) -> int:
        return self.num_rows

    @property
    def n_rois(self) -> int:
        return self.metadata.n_rois

    @property
    def n_classes(self) -> int:
        return len(self.metadata.label_names)

    def column(self, name: str) -> pa.ChunkedArray:
        """One column, read alone unless the whole table is already in memory (a large cohort is not)."""
        if self._table is not None:
            return self._table.column(name)
        try:
            return pq.read_table(self.path, columns=[name]).column(name)
        except (pa.ArrowInvalid, OSError) as err:
            raise CohortError(f"{self.path}: the file is corrupt or truncated ({err})") from None

    def scan_ids(self) -> np.ndarray:
        """Each row's unique id: the key of descriptions, teacher targets and predictions."""
        name = "scan_id" if "scan_id" in self.schema.names else "subject_id"  # version 1: one scan per subject
        return np.asarray(self.column(name).to_pylist(), dtype=object)

    def subject_ids(self) -> np.ndarray:
        """Each row's subject (repeats for sessions and runs): what folds are grouped by."""
        return np.asarray(self.column("subject_id").to_pylist(), dtype=object)

    def sites(self) -> np.ndarray | None:
        """Each row's site, or None when no row names one."""
        if "site" not in self.schema.names:
            return None
        values = self.column("site").to_pylist()
        return None if all(v is None for v in values) else np.asarray(values, dtype=object)

    def labels(self) -> np.ndarray:
        return self.column("label").to_numpy()

    def timeseries(self, index: int) -> np.ndarray | None:
        """One scan's series (T, R), or None for an FC-only scan; reads the row group that holds it."""
        return self.timeseries_rows([index])[0]

    def timeseries_rows(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray | None]:
        """The series (T, R) of the rows ``indices``, in that order (None where a scan is FC only), reading only
        the row groups that hold them: a worker reads its shard of scans a chunk of rows at a time."""
        rows = self.read_rows(indices, ["timeseries", "n_timepoints"])
        series = []
        for values, t in zip(rows.column("timeseries"), rows.column("n_timepoints")):
            values = values.values
            series.append(None if values is None else
                          values.to_numpy(zero_copy_only=False).reshape(t.as_py(), self.n_rois))  # (T, R)
        return series

    def _row_group_starts(self) -> np.ndarray:
        """The first row of each Parquet row group, and the row count after the last."""
        if self._starts is None:
            metadata = pq.ParquetFile(self.path).metadata
            self._starts = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
        return self._starts

    def row_groups(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The Parquet row group of each row (what a read of that row loads)."""
        return np.searchsorted(self._row_group_starts(), np.asarray(indices, dtype=np.int64), side="right") - 1

    def read_rows(self, indices: Sequence[int] | np.ndarray, columns: list[str]) -> pa.Table:
        """``columns`` of the rows ``indices``, in that order, reading only the row groups that hold them.

        A worker that trains on its shard of a cohort larger than its memory reads its rows this way: its
        memory holds one row group at a time, never the file."""
        if self._table is not None:
            return self._table.select(columns).take(pa.array(np.asarray(indices, dtype=np.int64)))
        indices = np.asarray(indices, dtype=np.int64)
        starts, groups = self._row_group_starts(), self.row_groups(indices)
        try:
            parquet = pq.ParquetFile(self.path)
            parts, order = [], []
            for group in np.unique(groups):
                at = np.flatnonzero(groups == group)
                rows = parquet.read_row_group(int(group), columns=columns)
                parts.append(rows.take(pa.array(indices[at] - starts[group])))
                order.append(at)
        except (pa.ArrowInvalid, OSError) as err:
            raise CohortError(f"{self.path}: the file is corrupt or truncated ({err})") from None
        if not parts:
            return pa.table({c: pa.array([], self.schema.field(c).type) for c in columns})
        table = pa.concat_tables(parts)
        return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def fc(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """FC matrices ``(N, R, R)``: stored triangles, or Pearson FC of the time series. Only the row groups
        holding ``indices`` are read (the whole file when None)."""
        if indices is None:
            indices = np.arange(self.num_rows)
        rows = self.read_rows(indices, ["fc_triu", "timeseries"])
        triu_column, timeseries_column = rows.column("fc_triu"), rows.column("timeseries")
        n_pairs = self.n_rois * (self.n_rois - 1) // 2
        lists = pa.concat_arrays(triu_column.chunks) if triu_column.num_chunks else None
        if lists is not None and lists.null_count == 0 and len(lists) and \
                pc.min_max(pc.list_value_length(lists)).as_py() == {"min": n_pairs, "max": n_pairs}:
            values = lists.flatten()
            # Every row stores its triangle: one copy and one scatter for all of them (a large cohort's
            # training passes read thousands of rows per chunk).
            return triu_to_fc(values.to_numpy(zero_copy_only=False).reshape(len(indices), n_pairs), self.n_rois)
        out = np.empty((len(indices), self.n_rois, self.n_rois), dtype=np.float32)
        for k, i in enumerate(indices):
            triu, timeseries = triu_column[k].values, timeseries_column[k].values
            out[k] = scan_fc(None if triu is None else triu.to_numpy(zero_copy_only=False),
                             None if timeseries is None else timeseries.to_numpy(zero_copy_only=False),
                             self.n_rois, f"{self.path}: row {int(i)}")
        return out

    def iter_batches(self, batch_size: int = 256, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the rows in record batches without loading the whole file."""
        try:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowInvalid, OSError) as err:
            raise CohortError(f"{self.path}: the file is corrupt or truncated ({err})") from None

    def summary(self) -> dict[str, Any]:
        labels = self.labels()
        counts = {name: int((labels == k).sum()) for k, name in enumerate(self.metadata.label_names)}
        _, scans_per_subject = np.unique(self.subject_ids(), return_counts=True)
        return {
            "path": str(self.path), "name": self.metadata.name, "atlas": self.metadata.atlas,
            "n_scans": self.num_rows, "n_subjects": int(len(scans_per_subject)),
            "max_scans_per_subject": int(scans_per_subject.max()), "n_rois": self.n_rois, "label_counts": counts,
            "connectivity": self.metadata.connectivity,
            "has_timeseries": self.null_count("timeseries") < self.num_rows,
            "has_fc": self.null_count("fc_triu") < self.num_rows,
        }

    def null_count(self, name: str) -> int:
        """Rows without a value in column ``name``: from the file's statistics where it has them (the
        time-series column of a large cohort is gigabytes), else from the column."""
        if self._table is None:
            metadata = pq.ParquetFile(self.path).metadata
            leaves = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path.split(".")[0] == name]
            stats = [metadata.row_group(g).column(leaves[0]).statistics
                     for g in range(metadata.num_row_groups)] if len(leaves) == 1 else [None]
            if all(s is not None and s.has_null_count for s in stats):
                # A list column's leaf counts a null list as one null value; an empty list too, which fc and
                # time series never are.
                return int(sum(s.null_count for s in stats))
        return self.column(name).null_count
