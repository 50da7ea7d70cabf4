"""``fmgnn ingest matrices DIR``: a folder of per-subject connectivity matrices and a phenotype table.

The form in which brain-network collections ship (e.g. "A Collection of Brain Network Datasets", Xu et
al. 2023: ABIDE's AAL-116 correlation matrices, one ``.mat`` per subject)::

    fmgnn ingest matrices ../shared/data/abide_aal116/matrices -o cohorts/abide.parquet \\
        participants=../shared/data/abide_aal116/Phenotypic_V1_0b_preprocessed1.csv id_column=SUB_ID \\
        label_column=DX_GROUP site_column=SITE_ID atlas=AAL116

Each file is one subject's ``R x R`` matrix: ``.mat`` (the variable ``mat_variable``, or the only one),
``.npy``, or ``.csv``/``.tsv``/``.txt`` (numbers, with or without a header row). Files are matched to the
table as :mod:`fmgnn.sources.subject_files` says. A matrix must be square with the atlas's size,
symmetric (to 1e-5), finite off the diagonal and, for correlations, within [-1, 1]; the diagonal is not
read. A matrix that is not is invalid input (``on_invalid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fmgnn.atlas import known_atlas, named_atlas, read_region_names
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.bids import read_timeseries_file
from fmgnn.sources.report import IngestReport
from fmgnn.sources.subject_files import (Invalid, SubjectFiles, SubjectFilesConfig, match_subject_files, read_each,
                                         read_mat_variable)

MATRIX_SUFFIXES = {".mat", ".npy", ".csv", ".tsv", ".txt"}
SYMMETRY_TOLERANCE = 1e-5
RANGE_TOLERANCE = 1e-4  # float32 correlations overshoot 1 by a few ulps


@dataclass
class MatricesConfig(SubjectFilesConfig):
    """Args (besides :class:`~fmgnn.sources.subject_files.SubjectFilesConfig`'s):
        connectivity: ``correlation`` (r in [-1, 1]) or ``weights`` (non-negative, e.g. streamline counts).
    """

    connectivity: Literal["correlation", "weights"] = "correlation"


def read_matrix(path: Path, config: MatricesConfig, n_rois: int | None) -> np.ndarray:
    """One subject's ``(R, R)`` matrix, checked; ``n_rois`` None: any square size (the first file's)."""
    suffix = path.suffix.lower()
    matrix = (read_mat_variable(path, config.mat_variable) if suffix == ".mat"
              else read_timeseries_file(path)[0])  # .npy, or a numeric table with an optional header
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or (n_rois and matrix.shape[0] != n_rois):
        expected = f"({n_rois}, {n_rois})" if n_rois else "square"
        raise CohortError(f"{path}: matrix has shape {matrix.shape}, expected {expected}")
    off = ~np.eye(matrix.shape[0], dtype=bool)
    bad = ~np.isfinite(matrix) & off
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise CohortError(f"{path}: {int(bad.sum()) // 2 or 1} NaN/inf values off the diagonal (first at [{i}, {j}])")
    asymmetry = np.abs(matrix - matrix.T)
    if asymmetry.max() > SYMMETRY_TOLERANCE:
        i, j = np.unravel_index(int(np.argmax(asymmetry)), matrix.shape)
        raise CohortError(f"{path}: not symmetric: [{i}, {j}] = {matrix[i, j]:.6g} but [{j}, {i}] = {matrix[j, i]:.6g}")
    values = matrix[off]
    if config.connectivity == "correlation" and values.size and np.abs(values).max() > 1 + RANGE_TOLERANCE:
        raise CohortError(f"{path}: holds |r| = {np.abs(values).max():.4g}, expected correlations in [-1, 1] "
                          "(structural weights need connectivity=weights)")
    if config.connectivity == "weights" and values.size and values.min() < 0:
        raise CohortError(f"{path}: holds {values.min():.4g}, expected non-negative weights (connectivity=weights)")
    return matrix


def atlas_size(config: MatricesConfig, subjects: SubjectFiles) -> int:
    """R: the named atlas's size, else the first file's (which then sets it for every file)."""
    if config.atlas_regions is not None:
        return len(read_region_names(config.atlas_regions))
    atlas = known_atlas(config.atlas)
    if atlas is not None:
        return atlas.n_rois
    return read_matrix(subjects.files[0].path, config, None).shape[0]


def ingest_matrices(folder: str | Path, output: str | Path, config: MatricesConfig | None = None) -> IngestReport:
    """Read a folder of per-subject matrices joined to a phenotype table; write a cohort Parquet file."""
    config = config or MatricesConfig()
    report = IngestReport(adapter="matrices", source=str(folder), output=str(output))
    subjects = match_subject_files(folder, config, MATRIX_SUFFIXES, report)
    invalid = Invalid(config.on_invalid, report)
    atlas = named_atlas(config.atlas, config.atlas_regions, atlas_size(config, subjects), number_unknown=True)
    metadata = CohortMetadata(name=config.name or Path(output).stem, atlas=atlas.name,
                              roi_names=list(atlas.roi_names), label_names=subjects.label_names, task=config.task,
                              networks=atlas.networks, connectivity=config.connectivity)
    with CohortWriter(output, metadata, source=str(subjects.folder)) as writer:
        for subject, matrix in read_each(subjects, lambda path: read_matrix(path, config, atlas.n_rois), invalid):
            np.fill_diagonal(matrix, 1.0 if config.connectivity == "correlation" else 0.0)
            writer.add(Scan(subject_id=subject.subject_id, label=subject.label, fc=matrix, age=subject.age,
                            sex=subject.sex, site=subject.site))
        report.count(writer, subjects.label_names)
        writer.set_provenance(report.provenance(participants_sha256=subjects.table_sha256, config=vars(config)))
    return report
