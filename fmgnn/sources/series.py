"""``fmgnn ingest series DIR``: a folder of per-subject ROI time series and a phenotype table.

    fmgnn ingest series ../shared/data/abide_nyu_cc200/rois_cc200 -o cohorts/nyu.parquet \\
        participants=../shared/data/abide_aal116/Phenotypic_V1_0b_preprocessed1.csv id_column=FILE_ID \\
        label_column=DX_GROUP site_column=SITE_ID atlas=CC200

Each file is one scan's ``T x R`` series, time down and regions across: ABIDE Preprocessed's ``.1D``
(tab-separated under a ``#1 #2 ...`` header), ``.tsv``/``.csv``/``.txt`` with or without a header of
region names, ``.npy``, or a MATLAB file (DPARSF's ``ROISignals_<subject>.mat``: the variable
``mat_variable``, or the only one). Files are matched to the table as
:mod:`fmgnn.sources.subject_files` says. An atlas fmgnn does not bundle (CC200) gets numbered regions.

A constant region (zero variance: outside the subject's brain mask, or a failed extraction) carries no
signal. With ``constant_regions=keep`` (the default) the scan is kept as it is: the region is listed in the
row's ``imputed_rois`` and in the report, and its correlations are 0 when FC is computed
(:func:`fmgnn.graphs.pearson_fc`), as a missing region is in the other adapters. With ``skip`` such scans
are invalid input (``on_invalid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fmgnn.atlas import named_atlas
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.bids import SUFFIXES, read_timeseries_file
from fmgnn.sources.report import IngestReport
from fmgnn.sources.subject_files import Invalid, SubjectFilesConfig, match_subject_files, read_each, read_mat_variable

SERIES_SUFFIXES = {*SUFFIXES, ".mat"}
MIN_TIMEPOINTS = 3


@dataclass
class SeriesConfig(SubjectFilesConfig):
    """Args (besides :class:`~fmgnn.sources.subject_files.SubjectFilesConfig`'s):
        constant_regions: ``keep`` a scan with constant regions (listed in ``imputed_rois``), or ``skip`` it.
    """

    constant_regions: Literal["keep", "skip"] = "keep"
    task: str = "classification of subjects from ROI time series"


def read_series(path: Path, config: SeriesConfig, n_rois: int | None) -> tuple[np.ndarray, list[str] | None]:
    """One scan's ``(T, R)`` series and its header's region names; ``n_rois`` None: any R (the first file's)."""
    if path.suffix.lower() == ".mat":
        series, header = read_mat_variable(path, config.mat_variable), None
    else:
        series, header = read_timeseries_file(path)
    if series.ndim != 2 or (n_rois and series.shape[1] != n_rois):
        raise CohortError(f"{path}: series has shape {series.shape}, expected (T, {n_rois or 'R'}), time down")
    if series.shape[0] < MIN_TIMEPOINTS:
        raise CohortError(f"{path}: {series.shape[0]} time points, need at least {MIN_TIMEPOINTS}")
    if not np.isfinite(series).all():
        t, r = np.argwhere(~np.isfinite(series))[0]
        raise CohortError(f"{path}: {int((~np.isfinite(series)).sum())} NaN/inf values (first at time {t}, "
                          f"region {r})")
    return series, header


def ingest_series(folder: str | Path, output: str | Path, config: SeriesConfig | None = None) -> IngestReport:
    """Read a folder of per-subject ROI time series joined to a phenotype table; write a cohort Parquet file."""
    config = config or SeriesConfig()
    report = IngestReport(adapter="series", source=str(folder), output=str(output))
    subjects = match_subject_files(folder, config, SERIES_SUFFIXES, report)
    invalid = Invalid(config.on_invalid, report)
    first, header = read_series(subjects.files[0].path, config, None)
    atlas = named_atlas(config.atlas, config.atlas_regions, first.shape[1], header, number_unknown=True)
    if atlas.n_rois != first.shape[1]:
        raise CohortError(f"{subjects.files[0].path}: {first.shape[1]} regions but atlas {atlas.name} has "
                          f"{atlas.n_rois}")
    metadata = CohortMetadata(name=config.name or Path(output).stem, atlas=atlas.name,
                              roi_names=list(atlas.roi_names), label_names=subjects.label_names, task=config.task,
                              networks=atlas.networks)
    constant: dict[str, list[str]] = {}
    lengths: set[int] = set()
    with CohortWriter(output, metadata, source=str(subjects.folder)) as writer:
        for subject, (series, _) in read_each(subjects, lambda path: read_series(path, config, atlas.n_rois), invalid):
            flat = np.flatnonzero(np.ptp(series, axis=0) == 0)
            if flat.size and config.constant_regions == "skip":
                invalid(str(subject.path), f"constant regions {[atlas.roi_names[r] for r in flat]} "
                        "(constant_regions=keep keeps the scan)")
                continue
            if flat.size:
                constant[subject.subject_id] = [atlas.roi_names[r] for r in flat]
            lengths.add(series.shape[0])
            writer.add(Scan(subject_id=subject.subject_id, label=subject.label, timeseries=series,
                            imputed_rois=flat.tolist(), age=subject.age, sex=subject.sex, site=subject.site))
        if constant:
            named = "; ".join(f"{scan}: {', '.join(regions)}" for scan, regions in constant.items())
            report.notes.append(f"constant regions (no signal: correlations 0, listed in imputed_rois) in "
                                f"{len(constant)} scans: {named}")
        report.notes.append("time points per scan: " + ", ".join(map(str, sorted(lengths))))
        report.count(writer, subjects.label_names)
        writer.set_provenance(report.provenance(participants_sha256=subjects.table_sha256, config=vars(config),
                                                constant_regions=constant))
    return report
