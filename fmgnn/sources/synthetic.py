"""A synthetic cohort with a known group effect: the built-in sample cohort of the main job.

Each subject's ROI time series follow a latent-network model on a real atlas (AAL-90 by default):

.. math::
    x_r(t) = a_{n(r)} \\, f_{n(r)}(t) + b \\, g(t) + \\varepsilon_r(t)

with one AR(1) factor :math:`f_n` per network, a global signal :math:`g`, white noise
:math:`\\varepsilon_r` (standard deviation ``noise_scale``, times a per-site factor) and subject-level
jitter on the loadings. A region's signal part is shared with every region of its network at the
same time point, which is what a graph model can use to predict a hidden window; the noise part no
model can predict, so ``reconstruction_ceiling`` (the R^2 of the signal part itself) bounds every
model's R^2 on hidden windows. For subjects with label 1 the
loading of the chosen ``effect_networks`` is scaled by ``1 + effect_size``, which raises
(or, when negative, lowers) their within-network connectivity: the group effect a classifier
should find. Every subject is drawn from its own generator seeded by ``(seed, index)``, so a
subject is the same whatever N is, and subjects stream to disk in row groups: memory does not
grow with N.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.signal import lfilter

from fmgnn.atlas import get_atlas
from fmgnn.cohort import CohortMetadata, CohortWriter, Scan
from fmgnn.errors import InputError
from fmgnn.graphs import pearson_fc
from fmgnn.sources.report import IngestReport

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    """Args:
        n_subjects: Number of subjects N.
        n_timepoints: Time points T per scan.
        atlas: Atlas giving region names and networks (R regions).
        effect_networks: Networks whose coupling differs in label 1.
        effect_size: Relative change of those networks' loadings in label 1 (0.3 = +30%).
        patient_fraction: Probability that a subject has label 1.
        coupling: Mean within-network loading a.
        global_coupling: Loading b of the global signal.
        loading_jitter: Subject-to-subject standard deviation of the loadings.
        ar_coefficient: AR(1) coefficient of the latent signals (temporal smoothness).
        noise_scale: Standard deviation of the regions' own white noise (site 0).
        n_sites: Number of acquisition sites; each adds its own noise level.
        store: What each row holds: the time series, their FC, or both.
        seed: Base seed; subject i uses ``default_rng([seed, i])``.
        name: Cohort name.
    """

    n_subjects: int = 200
    n_timepoints: int = 120
    atlas: str = "AAL-90"
    effect_networks: list[str] = field(default_factory=lambda: ["limbic", "subcortical"])
    effect_size: float = 0.35
    patient_fraction: float = 0.5
    coupling: float = 0.6
    global_coupling: float = 0.3
    loading_jitter: float = 0.15
    ar_coefficient: float = 0.6
    noise_scale: float = 1.0
    n_sites: int = 3
    store: Literal["timeseries", "fc", "both"] = "timeseries"
    seed: int = 0
    name: str = "synthetic"

    def __post_init__(self) -> None:
        if self.n_subjects < 1:
            raise InputError(f"synthetic.n_subjects must be >= 1, received {self.n_subjects}")
        if self.n_timepoints < 3:
            raise InputError(f"synthetic.n_timepoints must be >= 3, received {self.n_timepoints}")
        if not 0.0 < self.patient_fraction < 1.0:
            raise InputError(f"synthetic.patient_fraction must be in (0, 1), received {self.patient_fraction}")


LABEL_NAMES = ["control", "patient"]


class SyntheticCohort:
    """Draws subjects of a :class:`SyntheticConfig`; ``subject(i)`` is deterministic."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.atlas = get_atlas(config.atlas)
        unknown = sorted(set(config.effect_networks) - set(self.atlas.networks))
        if unknown:
            raise InputError(
                f"synthetic.effect_networks {unknown} not in atlas {self.atlas.name}; "
                f"it has {', '.join(self.atlas.networks)}"
            )
        r = self.atlas.n_rois
        self.network_of_roi = np.empty(r, dtype=np.int64)
        self.network_names = list(self.atlas.networks)
        for k, members in enumerate(self.atlas.networks.values()):
            self.network_of_roi[members] = k
        self.effect_rois = np.zeros(r, dtype=bool)
        for name in config.effect_networks:
            self.effect_rois[self.atlas.networks[name]] = True

    def subject(self, index: int) -> Scan:
        return self._draw(index)[0]

    def signal_and_noise(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Subject ``index``'s (T, R) series split into its signal part and its noise part."""
        return self._draw(index)[1:]

    def _draw(self, index: int) -> tuple[Scan, np.ndarray, np.ndarray]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, index])
        label = int(rng.random() < cfg.patient_fraction)
        t, r, k = cfg.n_timepoints, self.atlas.n_rois, len(self.network_names)
        innovations = rng.standard_normal((t, k + 1))  # (T, networks + global)
        latent = lfilter([np.sqrt(1 - cfg.ar_coefficient**2)], [1.0, -cfg.ar_coefficient], innovations, axis=0)
        loading = cfg.coupling + cfg.loading_jitter * rng.standard_normal(r)  # (R,)
        if label == 1:
            loading = np.where(self.effect_rois, loading * (1.0 + cfg.effect_size), loading)
        site = int(rng.integers(cfg.n_sites))
        noise_scale = cfg.noise_scale * (1.0 + 0.15 * site)
        signal = latent[:, self.network_of_roi] * loading + cfg.global_coupling * latent[:, [k]]  # (T, R)
        noise = noise_scale * rng.standard_normal((t, r))
        timeseries = (signal + noise).astype(np.float32)
        age = float(rng.uniform(18, 65))
        sex = "F" if rng.random() < 0.5 else "M"
        scan = Scan(
            subject_id=f"sub-{index:06d}", label=label,
            timeseries=timeseries if cfg.store in ("timeseries", "both") else None,
            fc=pearson_fc(timeseries) if cfg.store in ("fc", "both") else None,
            age=round(age, 1), sex=sex, site=f"site{site}",
        )
        return scan, signal, noise

    def __iter__(self) -> Iterator[Scan]:
        for index in range(self.config.n_subjects):
            yield self.subject(index)

    def metadata(self) -> CohortMetadata:
        cfg = self.config
        return CohortMetadata(
            name=cfg.name, atlas=self.atlas.name, roi_names=list(self.atlas.roi_names),
            label_names=LABEL_NAMES,
            task=f"control vs patient (synthetic: {', '.join(cfg.effect_networks)} coupling x{1 + cfg.effect_size:g})",
            networks=self.atlas.networks,
        )


def reconstruction_ceiling(config: SyntheticConfig, n_subjects: int = 20) -> float:
    """R^2 of the best possible reconstruction: each region's series predicted by its own signal part
    (the latent factors it loads on, known exactly), scored as the reconstruction task scores, per region
    z-scored; the rest is noise no model can predict."""
    cohort = SyntheticCohort(config)
    residual = total = 0.0
    for index in range(min(n_subjects, config.n_subjects)):
        signal, noise = cohort.signal_and_noise(index)
        x = signal + noise
        scale = x.std(axis=0)
        residual += float(((noise - noise.mean(axis=0)) ** 2 / scale**2).sum())
        total += float((((x - x.mean(axis=0)) / scale) ** 2).sum())
    return 1.0 - residual / total


def ingest_synthetic(output: str | Path, config: SyntheticConfig | None = None,
                     progress_every_s: float = 10.0) -> IngestReport:
    """Generate a synthetic cohort and stream it to a cohort Parquet file at ``output``."""
    config = config or SyntheticConfig()
    cohort = SyntheticCohort(config)
    report = IngestReport(adapter="synthetic", source="generator", output=str(output))
    start = last = time.monotonic()
    with CohortWriter(output, cohort.metadata(), source=f"synthetic(seed={config.seed})") as writer:
        for scan in cohort:
            writer.add(scan)
            now = time.monotonic()
            if now - last >= progress_every_s:
                done = writer.n_written
                rate = done / (now - start)
                log.info("synthetic: %d/%d subjects (%.0f/s, %.0f s left)", done, config.n_subjects, rate,
                         (config.n_subjects - done) / rate)
                last = now
        report.count(writer, LABEL_NAMES)
        writer.set_provenance(report.provenance(config=vars(config)))
    return report
