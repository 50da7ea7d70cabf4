"""A folder of per-subject ROI time-series files with a BIDS-like ``participants.tsv``.

Layout::

    folder/
      participants.tsv            participant_id  group  age  sex  site ...
      sub-01/func/sub-01_task-rest_timeseries.tsv      (any depth; CSV, TSV or NPY)
      sub-02_timeseries.csv

Each time-series file is ``T`` rows by ``R`` columns (time down, regions across); a CSV or TSV
may have a header row of region names. The files of a participant are those whose name starts
with its ``participant_id`` (then ``_`` or ``.``) and matches ``file_glob``; each is one scan. A
participant with several files (sessions, runs: ``sub-01_ses-2_task-rest_run-1_...``) gets one scan
per file, its ``scan_id`` made of the name's ``ses``, ``task`` and ``run`` entities; a participant
with one file keeps its ``participant_id`` as the scan id. With ``subject_column`` the table's rows
are scans (``participant_id`` the scan, that column its subject).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fmgnn.atlas import known_atlas, named_atlas
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.report import IngestReport

# .1D: AFNI text as ABIDE Preprocessed (PCP) ships ROI time series, tab-separated under a "#1 #2 ..." header.
SUFFIXES = {".csv": ",", ".tsv": "\t", ".1d": "\t", ".npy": None, ".txt": None}
log = logging.getLogger(__name__)


@dataclass
class BidsConfig:
    """Args:
        participants: Participants table, relative to the folder (TSV, or CSV by extension).
        label_column: Column of ``participants`` that holds the class.
        label_names: Class values in label order; default: the sorted distinct values.
        file_glob: Pattern a time-series file name must match (``*timeseries*``, say).
        atlas: Atlas name: known, or any other whose region names come from ``atlas_regions`` or the files'
            header; ``"none"``: the header's names, else placeholders.
        atlas_regions: Region names of an atlas fmgnn does not know (``atlas=MIST-122``): a list, or a labels
            file (one name per line, or a TSV/CSV with a name or label column).
        on_missing: A participant without a file is an ``"error"``, or ``"skip"``ped and reported.
        subject_column: Column of ``participants`` naming each row's subject, when rows are scans
            (sessions or runs of one subject on several rows); None: ``participant_id`` is the subject.
        name: Cohort name; default: the folder's name.
        task: The classification task in words.
    """

    participants: str = "participants.tsv"
    label_column: str = "group"
    label_names: list[str] | None = None
    file_glob: str = "*"
    atlas: str = "none"
    atlas_regions: list[str] | str | None = None
    on_missing: Literal["error", "skip"] = "error"
    subject_column: str | None = None
    name: str | None = None
    task: str = "classification of subjects from ROI time series"


def read_timeseries_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """``(T, R)`` float array and the header's region names (None without a header)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CohortError(f"{path}: unsupported extension {suffix!r}; use {', '.join(SUFFIXES)}")
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as err:
            raise CohortError(f"{path}: not a readable .npy array ({err})") from None
    delimiter = SUFFIXES[suffix]
    with path.open(newline="") as handle:
        first = next(csv.reader(handle, delimiter=delimiter) if delimiter else iter([handle.readline().split()]), [])
    index_header = is_index_header(first)
    if index_header and not first[0].strip().startswith("#"):  # pandas' to_csv writes column numbers: not a time point
        log.warning("%s: the first row (%s) numbers the columns; read as a header, not as a time point", path,
                    ", ".join(c.strip() for c in first[:4]) + (", ..." if len(first) > 4 else ""))
    has_header = index_header or any(not _is_number(cell) for cell in first)
    try:
        values = np.loadtxt(path, delimiter=delimiter, skiprows=1 if has_header else 0, ndmin=2)
    except ValueError as err:
        raise CohortError(f"{path}: not a numeric table ({err})") from None
    return values, ([c.strip() for c in first] if has_header and not index_header else None)


def is_index_header(cells: list[str]) -> bool:
    """A first row that is 0, 1, ..., R-1 (or 1, ..., R) written as integers (or AFNI's ``#1``...): column
    numbers, not data."""
    cells = [c.strip().removeprefix("#") for c in cells]
    if len(cells) < 2 or not all(re.fullmatch(r"\d+", c) for c in cells):
        return False
    numbers = [int(c) for c in cells]
    return numbers in (list(range(len(cells))), list(range(1, len(cells) + 1)))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return cell.strip().lower() in {"nan", "inf", "-inf"}


ENTITIES = ("ses", "task", "run")


def scan_id_of(path: Path, participant: str) -> str:
    """``participant`` plus the file name's BIDS session, task and run entities (``sub-01_ses-2_run-1``)."""
    found = {k: v for k, v in re.findall(r"(?:^|_)([a-z]+)-([A-Za-z0-9]+)", path.name[len(participant):])}
    return "_".join([participant, *(f"{k}-{found[k]}" for k in ENTITIES if k in found)])


def _find_file(folder: Path, participant: str, file_glob: str) -> list[Path]:
    matches = []
    for path in folder.rglob(f"{participant}*"):
        rest = path.name[len(participant):]
        if path.is_file() and rest[:1] in {"_", "."} and path.suffix.lower() in SUFFIXES and path.match(file_glob):
            matches.append(path)
    return sorted(matches)


def ingest_bids(folder: str | Path, output: str | Path, config: BidsConfig | None = None) -> IngestReport:
    """Read a folder of per-subject time-series files and write a cohort Parquet file at ``output``."""
    config = config or BidsConfig()
    folder = Path(folder)
    table_path = folder / config.participants
    if not table_path.is_file():
        raise CohortError(f"{table_path}: participants table not found")
    sep = "," if table_path.suffix.lower() == ".csv" else "\t"
    participants = pd.read_csv(table_path, sep=sep, dtype=str, keep_default_na=False)
    for column in ("participant_id", config.label_column, *filter(None, [config.subject_column])):
        if column not in participants.columns:
            raise CohortError(
                f"{table_path}: missing column {column!r}; columns are {', '.join(participants.columns)}"
            )
    values = participants[config.label_column].str.strip()
    empty = participants.loc[values == "", "participant_id"].tolist()
    if empty:
        raise CohortError(f"{table_path}: column {config.label_column!r} is empty for {', '.join(empty[:10])}")
    label_names = config.label_names or sorted(values.unique())
    unknown = sorted(set(values) - set(label_names))
    if unknown:
        raise CohortError(
            f"{table_path}: column {config.label_column!r} has values {unknown} not in label_names {label_names}"
        )

    report = IngestReport(adapter="bids", source=str(folder), output=str(output))
    writer: CohortWriter | None = None
    roi_names: list[str] | None = None
    try:
        for row, label_value in zip(participants.itertuples(index=False), values):
            pid = str(row.participant_id).strip()
            subject = str(getattr(row, config.subject_column)).strip() if config.subject_column else pid
            files = _find_file(folder, pid, config.file_glob)
            if not files:
                if config.on_missing == "skip":
                    report.skipped_subjects[pid] = "no time-series file"
                    continue
                raise CohortError(f"{table_path}: subject {pid}: no time-series file (file_glob={config.file_glob!r})")
            scans = {scan_id_of(f, pid): f for f in files} if len(files) > 1 else {pid: files[0]}
            if len(scans) < len(files):
                raise CohortError(f"{table_path}: subject {pid}: {len(files)} files match "
                                  f"({', '.join(map(str, files))}) but their names do not tell sessions or runs apart "
                                  f"(ses-, task-, run-); narrow file_glob={config.file_glob!r}")
            for scan_id, path in scans.items():
                writer, roi_names = _add_scan(writer, roi_names, path, scan_id, subject, row,
                                              label_names.index(label_value), label_names, folder, output, config)
        if writer is None:
            raise CohortError(f"{folder}: no subject has a time-series file; the cohort would be empty")
        report.count(writer, label_names)
        writer.set_provenance(report.provenance(config=vars(config)))
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return report


def _add_scan(writer: CohortWriter | None, roi_names: list[str] | None, path: Path, scan_id: str, subject: str,
              row: object, label: int, label_names: list[str], folder: Path, output: str | Path,
              config: BidsConfig) -> tuple[CohortWriter, list[str]]:
    """One file as one scan; the first file fixes R and the region names (and opens the writer)."""
    timeseries, header = read_timeseries_file(path)
    if writer is None:
        n_rois = timeseries.shape[1]
        atlas = named_atlas(config.atlas, config.atlas_regions, n_rois, header)
        roi_names = list(atlas.roi_names)
        if len(roi_names) != n_rois:
            raise CohortError(f"{path}: {n_rois} columns but atlas {atlas.name} has {len(roi_names)} regions")
        metadata = CohortMetadata(
            name=config.name or folder.name, atlas=atlas.name, roi_names=roi_names,
            label_names=label_names, task=config.task, networks=atlas.networks,
        )
        writer = CohortWriter(output, metadata, source=str(folder))
    elif header and header != roi_names and config.atlas_regions is None and known_atlas(config.atlas) is None:
        raise CohortError(f"{path}: header regions differ from the first subject's")
    extra = row._asdict()
    age = extra.get("age") or None
    writer.add(Scan(
        subject_id=subject, scan_id=scan_id, label=label,
        timeseries=_with_source(timeseries, path, writer.metadata.n_rois),
        age=float(age) if age not in (None, "", "n/a") else None,
        sex=extra.get("sex") or None, site=extra.get("site") or None,
    ))
    return writer, roi_names


def _with_source(timeseries: np.ndarray, path: Path, n_rois: int) -> np.ndarray:
    if timeseries.ndim != 2 or timeseries.shape[1] != n_rois:
        raise CohortError(f"{path}: time series has shape {timeseries.shape}, expected (T, {n_rois})")
    if not np.isfinite(timeseries).all():
        raise CohortError(f"{path}: time series holds NaN or inf values")
    return timeseries
