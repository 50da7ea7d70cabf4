"""The corrpops FC format: an ``.npz`` whose arrays are groups of FC upper triangles.

Each group array (``control``, ``diagnosed``...) is ``(N_g, R (R - 1) / 2)``: the upper
triangle without the diagonal, in ``numpy.triu_indices(R, 1)`` order, NaN where the scan has no
signal. Missing values are handled explicitly:

1. regions that are missing (all-NaN) in every subject are dropped from the cohort;
2. the remaining missing values are set to 0 ("no evidence of connection") and the regions are
   listed in the row's ``imputed_rois``, or, with ``impute="drop_subject"``, the subject is
   left out. Zero is a constant, not a statistic of the cohort, so imputation fits nothing on
   subjects that later land in a test fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fmgnn.atlas import named_atlas
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan, triu_to_fc
from fmgnn.sources.report import IngestReport, file_sha256


@dataclass
class CorrpopsConfig:
    """Args:
        groups: Array names in the ``.npz``, in label order (label 0 first).
        label_names: Display names for the groups; default: the group names.
        atlas: Atlas of the regions; ``"AAL-90"``, any name with ``atlas_regions``, or ``"none"`` for placeholder
            names.
        atlas_regions: Region names of an atlas fmgnn does not know (``atlas=MIST-122``): a list, or a labels
            file (one name per line, or a TSV/CSV with a name or label column).
        impute: ``"zero"`` fills missing regions with 0 and records them; ``"drop_subject"`` skips them.
        name: Cohort name; default: the file's stem.
        task: The classification task in words.
    """

    groups: list[str] = field(default_factory=lambda: ["control", "diagnosed"])
    label_names: list[str] | None = None
    atlas: str = "AAL-90"
    atlas_regions: list[str] | str | None = None
    impute: Literal["zero", "drop_subject"] = "zero"
    name: str | None = None
    task: str = "healthy control vs diagnosed patient, from resting-state functional connectivity"


def _n_rois_from_pairs(n_pairs: int, where: str) -> int:
    n_rois = int(round((1 + np.sqrt(1 + 8 * n_pairs)) / 2))
    if n_rois * (n_rois - 1) // 2 != n_pairs:
        raise CohortError(f"{where}: {n_pairs} values per row is not an upper triangle R(R-1)/2 of any R")
    return n_rois


def ingest_corrpops(path: str | Path, output: str | Path, config: CorrpopsConfig | None = None) -> IngestReport:
    """Read a corrpops ``.npz`` and write a cohort Parquet file at ``output``."""
    config = config or CorrpopsConfig()
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CohortError(f"{path}: not a readable .npz file ({err})") from None
    missing = [g for g in config.groups if g not in archive.files]
    if missing:
        raise CohortError(f"{path}: group(s) {', '.join(missing)} not found; the file has {', '.join(archive.files)}")

    groups = [np.asarray(archive[g], dtype=np.float64) for g in config.groups]
    for name, values in zip(config.groups, groups):
        if values.ndim != 2:
            raise CohortError(f"{path}: group {name} has shape {values.shape}, expected (subjects, R(R-1)/2)")
    widths = {values.shape[1] for values in groups}
    if len(widths) != 1:
        raise CohortError(f"{path}: groups have different widths {sorted(widths)}")
    n_rois = _n_rois_from_pairs(widths.pop(), str(path))
    atlas = named_atlas(config.atlas, config.atlas_regions, n_rois)
    if atlas.n_rois != n_rois:
        raise CohortError(f"{path}: rows hold {n_rois} regions but atlas {atlas.name} has {atlas.n_rois}")

    fc = triu_to_fc(np.concatenate(groups), n_rois, diagonal=np.nan)  # (N, R, R), NaN on the diagonal
    off_diagonal = ~np.eye(n_rois, dtype=bool)
    # A region is missing in a scan when all its correlations are NaN.
    region_missing = np.all(np.isnan(fc) | ~off_diagonal, axis=2)  # (N, R)
    keep = ~region_missing.all(axis=0)  # (R,)
    kept = np.flatnonzero(keep)
    fc = fc[:, kept][:, :, kept]  # (N, R', R')
    region_missing = region_missing[:, kept]
    roi_names = [atlas.roi_names[i] for i in kept]

    report = IngestReport(adapter="corrpops", source=str(path), output=str(output))
    report.dropped_rois = [atlas.roi_names[i] for i in np.flatnonzero(~keep)]
    label_names = config.label_names or list(config.groups)
    labels = np.concatenate([np.full(len(v), k) for k, v in enumerate(groups)])
    subject_ids = [f"{g}_{i:03d}" for g, v in zip(config.groups, groups) for i in range(len(v))]

    networks = {
        net: [int(np.searchsorted(kept, i)) for i in members if keep[i]]
        for net, members in atlas.networks.items()
    }
    metadata = CohortMetadata(
        name=config.name or path.stem, atlas=atlas.name, roi_names=roi_names, label_names=label_names,
        task=config.task, networks=networks,
    )
    n_isolated = 0
    scans = []
    for i, sid in enumerate(subject_ids):
        subject_fc = fc[i]
        missing_regions = np.flatnonzero(region_missing[i])
        nan_mask = np.isnan(subject_fc) & ~np.eye(len(kept), dtype=bool)
        if nan_mask.any() and config.impute == "drop_subject":
            report.skipped_subjects[sid] = f"missing regions {', '.join(roi_names[r] for r in missing_regions)}"
            continue
        if missing_regions.size:
            report.imputed[sid] = [roi_names[r] for r in missing_regions]
        isolated = nan_mask.copy()
        isolated[missing_regions, :] = False
        isolated[:, missing_regions] = False
        n_isolated += int(isolated.sum()) // 2
        subject_fc = np.where(np.isnan(subject_fc), 0.0, subject_fc)
        np.fill_diagonal(subject_fc, 1.0)
        scans.append(Scan(subject_id=sid, label=int(labels[i]), fc=subject_fc, imputed_rois=missing_regions.tolist()))

    if config.impute == "zero" and (report.imputed or n_isolated):
        report.notes.append(
            "missing correlations were set to 0 (a constant: nothing is fitted on the cohort); "
            "imputed regions are listed per scan in the column imputed_rois"
        )
    if n_isolated:
        report.notes.append(f"{n_isolated} isolated missing correlations (outside missing regions) were set to 0")

    with CohortWriter(output, metadata, source=str(path)) as writer:
        for scan in scans:
            writer.add(scan)
        report.count(writer, label_names)
        # Provenance is known only after validation; the writer's schema is fixed at close.
        writer.set_provenance(report.provenance(sha256=file_sha256(path), config=vars(config)))
    return report
