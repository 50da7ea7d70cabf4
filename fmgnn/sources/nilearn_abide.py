"""ABIDE preprocessed (PCP) ROI time series through nilearn's fetcher.

``nilearn.datasets.fetch_abide_pcp`` downloads what is missing under ``data_dir`` and reads what
is there, laid out as::

    data_dir/ABIDE_pcp/Phenotypic_V1_0b_preprocessed1.csv
    data_dir/ABIDE_pcp/<pipeline>/<strategy>/<FILE_ID>_rois_aal.1D      (T x 116)

With every file present no network is needed. PCP's AAL derivative has the 116 AAL regions;
``cerebral_only`` keeps the first 90 (AAL-90, the cerebrum, as BLEG uses). Labels follow the
phenotypic ``DX_GROUP`` (1 autism, 2 control): label 0 is control, 1 autism.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fmgnn.atlas import AAL90, AAL116
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.report import IngestReport

ABIDE_LABEL_NAMES = ["control", "autism"]
_DX_TO_LABEL = {1: 1, 2: 0}
_SEX = {1: "M", 2: "F"}


@dataclass
class AbideConfig:
    """Args:
        data_dir: nilearn's data folder (downloads go there; existing files are reused).
        pipeline: PCP preprocessing pipeline.
        band_pass_filtering: PCP strategy: band-pass filtered or not.
        global_signal_regression: PCP strategy: global signal regressed or not.
        quality_checked: Keep only scans that passed PCP's quality raters.
        n_subjects: Fetch only the first N subjects (None: all).
        cerebral_only: Keep the 90 cerebral AAL regions (AAL-90) out of 116.
        name: Cohort name.
    """

    data_dir: str = "~/nilearn_data"
    pipeline: Literal["cpac", "css", "dparsf", "niak"] = "cpac"
    band_pass_filtering: bool = False
    global_signal_regression: bool = False
    quality_checked: bool = True
    n_subjects: int | None = None
    cerebral_only: bool = True
    name: str = "abide_pcp"


def ingest_abide(output: str | Path, config: AbideConfig | None = None) -> IngestReport:
    """Fetch (or read) ABIDE PCP AAL time series and write a cohort Parquet file at ``output``."""
    from nilearn.datasets import fetch_abide_pcp

    config = config or AbideConfig()
    data_dir = Path(config.data_dir).expanduser()
    try:
        bunch = fetch_abide_pcp(
            data_dir=str(data_dir), n_subjects=config.n_subjects, pipeline=config.pipeline,
            band_pass_filtering=config.band_pass_filtering,
            global_signal_regression=config.global_signal_regression,
            derivatives=["rois_aal"], quality_checked=config.quality_checked, verbose=0,
        )
    except OSError as err:  # nilearn raises OSError subclasses when a download fails
        raise CohortError(f"{data_dir}: ABIDE files are missing and could not be downloaded ({err})") from None
    phenotypic = bunch.phenotypic.reset_index(drop=True)
    series = bunch.rois_aal
    if len(series) == 0:
        raise CohortError(f"{data_dir}: no ABIDE subject passed the filters")
    n_columns = np.atleast_2d(series[0]).shape[1]
    if n_columns != 116:
        raise CohortError(f"{data_dir}: rois_aal files have {n_columns} columns, expected the 116 AAL regions")
    atlas = AAL90 if config.cerebral_only else AAL116
    metadata = CohortMetadata(
        name=config.name, atlas=atlas.name, roi_names=list(atlas.roi_names),
        label_names=ABIDE_LABEL_NAMES, task="healthy control vs autism spectrum disorder (ABIDE I, PCP)",
        networks=atlas.networks,
    )
    report = IngestReport(adapter="abide", source=str(data_dir), output=str(output))
    with CohortWriter(output, metadata, source=str(data_dir / "ABIDE_pcp")) as writer:
        for i, timeseries in enumerate(series):
            row = phenotypic.iloc[i]
            dx = int(row["DX_GROUP"])
            if dx not in _DX_TO_LABEL:
                raise CohortError(f"{data_dir}: subject {row['FILE_ID']}: field DX_GROUP is {dx}, expected 1 or 2")
            timeseries = np.atleast_2d(timeseries)[:, : atlas.n_rois]  # (T, R)
            writer.add(Scan(
                subject_id=str(row["FILE_ID"]), label=_DX_TO_LABEL[dx], timeseries=timeseries,
                age=float(row["AGE_AT_SCAN"]), sex=_SEX.get(int(row["SEX"])), site=str(row["SITE_ID"]),
            ))
        report.count(writer, ABIDE_LABEL_NAMES)
        if config.cerebral_only:
            report.notes.append("kept the 90 cerebral AAL regions; the 26 cerebellar and vermis regions were dropped")
        writer.set_provenance(report.provenance(config=vars(config)))
    return report
