"""ADHD-200 (nilearn's 40-subject release) as AAL-90 ROI time series, through nilearn's fetchers.

``fetch_adhd`` gives preprocessed 4-D images, motion/nuisance regressors and phenotypes;
``fetch_atlas_aal`` gives the AAL (SPM12) label image; a ``NiftiLabelsMasker`` averages each
region's voxels per time point, regressing out the confounds. Downloads go to ``data_dir``;
files already there are reused, laid out as nilearn stores them::

    data_dir/adhd/ADHD200_40subs_motion_parameters_and_phenotypics.csv
    data_dir/adhd/data/<id>/<id>_rest_tshift_RPI_voreg_mni.nii.gz, <id>_regressors.csv
    data_dir/aal_SPM12/aal/atlas/AAL.nii, AAL.xml

Masker columns are matched to AAL-90 by region name (the masker's ``region_names_``), not by
position, and put in AAL-90 order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmgnn.atlas import AAL90
from fmgnn.cohort import CohortError, CohortMetadata, CohortWriter, Scan
from fmgnn.sources.report import IngestReport

ADHD_LABEL_NAMES = ["control", "ADHD"]


@dataclass
class AdhdConfig:
    """Args:
        data_dir: nilearn's data folder (downloads go there; existing files are reused).
        n_subjects: Fetch only the first N of the 40 subjects (None: all).
        label_column: Phenotypic column holding 1 for ADHD and 0 for control.
        use_confounds: Regress the released nuisance regressors out of each region's signal.
        standardize: Z-score each region's signal (nilearn's ``zscore_sample``).
        detrend: Remove linear trends.
        name: Cohort name.
    """

    data_dir: str = "~/nilearn_data"
    n_subjects: int | None = None
    label_column: str = "adhd"
    use_confounds: bool = True
    standardize: bool = True
    detrend: bool = True
    name: str = "adhd200"


def ingest_adhd(output: str | Path, config: AdhdConfig | None = None) -> IngestReport:
    """Fetch (or read) ADHD-200 images, extract AAL-90 time series, write a cohort Parquet file."""
    from nilearn.datasets import fetch_adhd, fetch_atlas_aal
    from nilearn.maskers import NiftiLabelsMasker

    config = config or AdhdConfig()
    data_dir = Path(config.data_dir).expanduser()
    try:
        adhd = fetch_adhd(n_subjects=config.n_subjects, data_dir=str(data_dir), verbose=0)
        atlas = fetch_atlas_aal(version="SPM12", data_dir=str(data_dir), verbose=0)
    except OSError as err:  # nilearn raises OSError subclasses when a download fails
        raise CohortError(
            f"{data_dir}: ADHD-200 or AAL files are missing and could not be downloaded ({err})"
        ) from None
    phenotypic = adhd.phenotypic.reset_index(drop=True)
    for column in ("Subject", config.label_column):
        if column not in phenotypic.columns:
            raise CohortError(f"{data_dir}/adhd: phenotypic table has no column {column!r}")

    masker = NiftiLabelsMasker(labels_img=atlas.maps, lut=atlas.lut, standardize="zscore_sample"
                               if config.standardize else None, detrend=config.detrend, t_r=adhd.t_r)
    masker.fit()
    names = masker.region_names_  # column -> region name
    column_of = {name: column for column, name in names.items()}
    missing = [name for name in AAL90.roi_names if name not in column_of]
    if missing:
        raise CohortError(f"{atlas.maps}: AAL regions {', '.join(missing[:5])} not found in the label image")
    columns = [column_of[name] for name in AAL90.roi_names]

    metadata = CohortMetadata(
        name=config.name, atlas=AAL90.name, roi_names=list(AAL90.roi_names), label_names=ADHD_LABEL_NAMES,
        task="typically developing control vs ADHD (ADHD-200, nilearn release)", networks=AAL90.networks,
    )
    report = IngestReport(adapter="adhd", source=str(data_dir), output=str(output))
    by_subject = {str(s): i for i, s in enumerate(phenotypic["Subject"])}
    with CohortWriter(output, metadata, source=str(data_dir / "adhd")) as writer:
        for func, confounds in zip(adhd.func, adhd.confounds):
            subject = Path(func).parent.name
            if subject not in by_subject:
                raise CohortError(f"{func}: subject {subject} has no row in the phenotypic table")
            row = phenotypic.iloc[by_subject[subject]]
            signals = masker.transform(func, confounds=confounds if config.use_confounds else None)  # (T, 116)
            age = row.get("age")
            writer.add(Scan(
                subject_id=subject, label=int(row[config.label_column]), timeseries=signals[:, columns],
                age=float(age) if age is not None and not np.isnan(float(age)) else None,
                sex=str(row["sex"]) if "sex" in row else None, site=str(row["site"]) if "site" in row else None,
            ))
        report.count(writer, ADHD_LABEL_NAMES)
        report.notes.append(
            "time series: AAL (SPM12) regions averaged by NiftiLabelsMasker; kept the 90 cerebral regions"
        )
        writer.set_provenance(report.provenance(config=vars(config)))
    return report
