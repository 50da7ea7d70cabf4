r"""Paired comparison of models scored on the same splits: does one beat the other by more than noise?

For each split j (a fold of a seed, or a seed of a node split) the difference
:math:`d_j = m_j^{\text{model}} - m_j^{\text{reference}}` of a metric is taken; the comparison reports
the differences, their mean :math:`\bar d`, a 95% interval and a two-sided p-value of the corrected
resampled t-test (Nadeau and Bengio 2003, "Inference for the generalization error"; Bouckaert and Frank
2004 for repeated k-fold):

.. math::
    t = \frac{\bar d}{\sqrt{\left(\frac{1}{n} + \frac{n_{\text{test}}}{n_{\text{train}}}\right)\hat\sigma^2}},
    \qquad \text{df} = n - 1,

where :math:`n` is the number of splits and :math:`\hat\sigma^2` the sample variance of the :math:`d_j`.
The plain paired t-test divides by :math:`n` alone; it treats the splits as independent, which they
are not (training parts overlap), and so it is too optimistic. The interval is
:math:`\bar d \pm t_{0.975,\,n-1} \cdot` the same corrected standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class PairedDifference:
    """``model`` minus ``reference`` on ``metric``, split by split (positive: the model scores higher)."""

    model: str
    reference: str
    metric: str
    splits: list[str]
    differences: list[float]
    mean: float
    ci95_low: float
    ci95_high: float
    p_value: float
    test_train_ratio: float

    @property
    def n_splits(self) -> int:
        return len(self.differences)

    def to_dict(self) -> dict:
        return {**asdict(self), "n_splits": self.n_splits}

    def line(self) -> str:
        """One printed line: difference, interval, p-value and what it was computed over."""
        p = "n/a" if math.isnan(self.p_value) else f"{self.p_value:.3g}"
        interval = "n/a" if math.isnan(self.ci95_low) else f"{self.ci95_low:+.3f}, {self.ci95_high:+.3f}"
        return (f"{self.model} - {self.reference}: {self.metric} {self.mean:+.3f} "
                f"[95% CI {interval}], p = {p} "
                f"(corrected resampled t-test, {self.n_splits} splits)")


def corrected_resampled_ttest(differences: Sequence[float], test_train_ratio: float) -> tuple[float, float, float,
                                                                                             float]:
    """Mean difference, 95% interval and two-sided p-value (``nan`` interval and p with one split)."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("no paired splits to compare")
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = math.sqrt((1.0 / n + test_train_ratio) * float(d.var(ddof=1)))
    if se == 0.0:  # every split gave the same difference
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    t = mean / se
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return mean, mean - half, mean + half, float(2 * stats.t.sf(abs(t), n - 1))


def paired_difference(model: str, reference: str, metric: str, per_split: Mapping[str, Mapping[str, Mapping]],
                      test_train_ratio: float) -> PairedDifference:
    """``per_split[name][split]`` holds a model's metrics on a split; only splits both models ran count."""
    ours, theirs = per_split[model], per_split[reference]
    names = [s for s in ours if s in theirs and not _missing(ours[s].get(metric)) and
             not _missing(theirs[s].get(metric))]
    if not names:
        raise ValueError(f"{model} and {reference} share no split with {metric}")
    differences = [float(ours[s][metric]) - float(theirs[s][metric]) for s in names]
    mean, low, high, p = corrected_resampled_ttest(differences, test_train_ratio)
    return PairedDifference(model, reference, metric, names, differences, mean, low, high, p, test_train_ratio)


def compare_to_reference(per_split: Mapping[str, Mapping[str, Mapping]], reference: str, metrics: Sequence[str],
                         test_train_ratio: float) -> dict:
    """Every other model against ``reference`` on each of ``metrics``: ``{"reference", "models": {model:
    {metric: PairedDifference.to_dict()}}}`` (metrics.json's ``paired`` entry)."""
    return {"reference": reference, "test": "corrected resampled t-test (Nadeau and Bengio 2003)",
            "test_train_ratio": test_train_ratio,
            "models": {model: {m: paired_difference(model, reference, m, per_split, test_train_ratio).to_dict()
                               for m in metrics}
                       for model in per_split if model != reference}}


def best_of(means: Mapping[str, float], candidates: Sequence[str]) -> str | None:
    """The candidate with the highest mean (the default reference: the best model without a foundation model)."""
    present = [c for c in candidates if c in means and not _missing(means[c])]
    return max(present, key=lambda c: means[c]) if present else None


def split_ratio(test_sizes: Sequence[int], train_sizes: Sequence[int]) -> float:
    """n_test / n_train of the correction, from the splits' mean sizes (the training part: all that is
    not the test part, since validation subjects select the model)."""
    return float(np.mean(test_sizes)) / float(np.mean(train_sizes))


def format_paired(paired: Mapping, metrics: Sequence[str]) -> list[str]:
    """The printed lines of a ``compare_to_reference`` result."""
    return [from_dict(by_metric[metric]).line() for by_metric in paired["models"].values() for metric in metrics]


def from_dict(value: Mapping) -> PairedDifference:
    """A ``PairedDifference`` from its ``to_dict`` record (as in metrics.json)."""
    return PairedDifference(**{k: v for k, v in value.items() if k != "n_splits"})


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


MIN_R2_FOR_RELATIVE = 0.1  # below it a percentage of the baseline's R^2 is noise over a near-zero base


def relative_r2(model_r2: float, baseline_r2: float) -> float | None:
    """The model's R^2 gain as a share of the best baseline's; None when that baseline explains too little
    (an R^2 of 0.007 against -0.014 is not a +150% improvement, it is two models at the mean)."""
    return (model_r2 - baseline_r2) / baseline_r2 if baseline_r2 >= MIN_R2_FOR_RELATIVE else None


def format_relative(value: float | None) -> str:
    return f"{value:+.1%} of its R^2" if value is not None else f"no relative figure (its R^2 is below {MIN_R2_FOR_RELATIVE})"
