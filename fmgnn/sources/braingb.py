"""BrainGB / Brain-Network-Transformer style ``.npy`` dicts.

The file is ``np.save(path, {"corr": (N, R, R), "timeseires": (N, R, T), "label": (N,), ...})``
(``timeseires`` is spelled as in the BNT code; ``timeseries`` is accepted too). Optional keys:
``site`` (N,), ``subject`` or ``subject_id`` (N,: a subject may repeat, one row per session or run),
``scan_id`` (N,). Either ``corr`` or the time series may be absent. Structural connectomes
(streamline counts, non-negative) are ingested with ``connectivity=weights``.

Loading a dict from ``.npy`` needs pickle: only ingest files you trust.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fmgnn.atlas import named_atlas
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.report import IngestReport, file_sha256


@dataclass
class BrainGBConfig:
    """Args:
        label_names: Class names in label order; default ``class_0``, ``class_1``...
        atlas: Atlas name (known, or any with ``atlas_regions``), or ``"none"`` for placeholder region names.
        atlas_regions: Region names of an atlas fmgnn does not know (``atlas=MIST-122``): a list, or a labels
            file (one name per line, or a TSV/CSV with a name or label column).
        timeseries_layout: ``"roi_time"`` for ``(N, R, T)`` (BNT), ``"time_roi"`` for ``(N, T, R)``.
        name: Cohort name; default: the file's stem.
        task: The classification task in words.
        connectivity: ``correlation`` (``corr`` holds r in [-1, 1]) or ``weights`` (non-negative edge weights,
            e.g. DTI streamline counts).
    """

    label_names: list[str] | None = None
    atlas: str = "none"
    atlas_regions: list[str] | str | None = None
    timeseries_layout: Literal["roi_time", "time_roi"] = "roi_time"
    name: str | None = None
    task: str = "classification of subjects from brain networks"
    connectivity: Literal["correlation", "weights"] = "correlation"


def _load_dict(path: Path) -> dict:
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as err:
        raise CohortError(f"{path}: not a readable .npy file ({err})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CohortError(f"{path}: expected a dict saved with np.save, found {type(obj).__name__}")
    return obj


def ingest_braingb(path: str | Path, output: str | Path, config: BrainGBConfig | None = None) -> IngestReport:
    """Read a BrainGB/BNT ``.npy`` dict and write a cohort Parquet file at ``output``."""
    config = config or BrainGBConfig()
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: file not found")
    data = _load_dict(path)
    if "label" not in data:
        raise CohortError(f"{path}: missing key 'label'; the file has {', '.join(map(str, data))}")
    labels = np.asarray(data["label"]).reshape(-1)
    n = labels.shape[0]
    corr = data.get("corr")
    timeseries = data.get("timeseires", data.get("timeseries"))
    if corr is None and timeseries is None:
        raise CohortError(f"{path}: neither 'corr' nor 'timeseires' is present")
    if timeseries is not None:
        timeseries = np.asarray(timeseries)
        if timeseries.ndim != 3 or timeseries.shape[0] != n:
            raise CohortError(f"{path}: field timeseires has shape {timeseries.shape}, expected ({n}, R, T)")
        if config.timeseries_layout == "roi_time":
            timeseries = timeseries.transpose(0, 2, 1)  # (N, R, T) -> (N, T, R)
    if corr is not None:
        corr = np.asarray(corr)
        if corr.ndim != 3 or corr.shape[0] != n or corr.shape[1] != corr.shape[2]:
            raise CohortError(f"{path}: field corr has shape {corr.shape}, expected ({n}, R, R)")
    n_rois = corr.shape[1] if corr is not None else timeseries.shape[2]
    if timeseries is not None and timeseries.shape[2] != n_rois:
        raise CohortError(
            f"{path}: field timeseires has {timeseries.shape[2]} regions but corr has {n_rois} "
            "(is timeseries_layout right?)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels.astype(float), 1) == 0):
            raise CohortError(f"{path}: field label must hold integers, found {labels[:5]}...")
        labels = labels.astype(np.int64)
    n_classes = int(labels.max()) + 1 if n else 0
    label_names = config.label_names or [f"class_{k}" for k in range(n_classes)]
    atlas = named_atlas(config.atlas, config.atlas_regions, n_rois)
    if atlas.n_rois != n_rois:
        raise CohortError(f"{path}: data hold {n_rois} regions but atlas {atlas.name} has {atlas.n_rois}")
    sites = data.get("site")
    subject_ids, scan_ids = row_ids(data, n)

    metadata = CohortMetadata(
        name=config.name or path.stem, atlas=atlas.name, roi_names=list(atlas.roi_names),
        label_names=label_names, task=config.task, networks=atlas.networks, connectivity=config.connectivity,
    )
    report = IngestReport(adapter="braingb", source=str(path), output=str(output))
    with CohortWriter(output, metadata, source=str(path)) as writer:
        for i in range(n):
            scan_id = None if scan_ids[i] == subject_ids[i] else scan_ids[i]  # one scan: the subject names it
            writer.add(Scan(
                subject_id=subject_ids[i], scan_id=scan_id, label=int(labels[i]),
                timeseries=None if timeseries is None else timeseries[i],
                fc=None if corr is None else corr[i],
                site=None if sites is None else str(sites[i]),
            ))
        report.count(writer, label_names)
        writer.set_provenance(report.provenance(sha256=file_sha256(path), config=vars(config)))
    return report


def row_ids(data: dict, n: int) -> tuple[list[str], list[str]]:
    """Each row's subject and scan id: the dict's ``subject`` (or ``subject_id``) and ``scan_id`` arrays; a
    subject's rows without scan ids are numbered ``<subject>_scan-<k>``; no subjects: ``sub-<row>``."""
    subjects = data.get("subject", data.get("subject_id"))
    subject_ids = [str(s) for s in subjects] if subjects is not None else [f"sub-{i:05d}" for i in range(n)]
    if data.get("scan_id") is not None:
        return subject_ids, [str(s) for s in data["scan_id"]]
    repeated = {s for s, k in Counter(subject_ids).items() if k > 1}
    seen: dict[str, int] = {}
    scan_ids = []
    for subject in subject_ids:
        seen[subject] = seen.get(subject, 0) + 1
        scan_ids.append(f"{subject}_scan-{seen[subject]}" if subject in repeated else subject)
    return subject_ids, scan_ids
