"""BLEG on NMDA, 10 folds x 3 seeds: the plain single-process loop against the same computation under fmgnn.

    python bench/bleg_nmda.py [--work DIR] [--runs plain fmgnn]

The published table's settings (bench/RESULTS.md, "BLEG on nmda_aal.npz"): rules-engine texts,
variants logistic, gcn_alone and bleg, stage 2 one epoch with all-MiniLM-L6-v2 (LoRA), stage 3 up to 60
epochs with patience 15. ``plain`` runs every stage in this process (``ray.num_workers=0``: the training
loop without Ray, the teacher inline); ``fmgnn`` is the job's default (one Ray Train worker per group,
two groups at once, a stage's folds sharing a group). The same tasks and seeds: the script checks that
every fold's test probabilities agree and prints both wall times and the per-variant accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmgnn.config import load_config  # noqa: E402
from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.evaluation.paired import format_paired  # noqa: E402
from fmgnn.evaluation.splits import cohort_splits  # noqa: E402
from fmgnn.sources.corrpops import ingest_corrpops  # noqa: E402
from pipelines.augment import AugmentConfig, run_augment  # noqa: E402
from pipelines.bleg import BLEGJobConfig, run_bleg  # noqa: E402
from pipelines.classification import paired_comparison  # noqa: E402

NMDA = REPO.parent / "shared" / "data" / "corrpops" / "nmda_aal.npz"
SETTINGS = ["variants=[logistic,gcn_alone,bleg]", "stage2.epochs=1", "stage3.epochs=60", "stage3.patience=15"]
RUNS = {"plain": ["ray.num_workers=0"], "fmgnn": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (kept; a rerun reuses the texts)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fmgnn-bleg-nmda-"))
    cohort = work / "nmda_aal.parquet"
    if not cohort.is_file():
        ingest_corrpops(NMDA, cohort)
    texts = work / "augment_rules"
    if not (texts / "summary.json").is_file():
        run_augment(load_config(AugmentConfig, None, [f"cohort={cohort}", f"output={texts}"]))
    seconds, folds = {}, {}
    for name in args.runs:
        run_dir = work / name
        config = load_config(BLEGJobConfig, REPO / "configs" / "bleg.yaml", [
            f"cohort={cohort}", f"texts.output={texts}", f"run_dir={run_dir}", *SETTINGS, *RUNS[name]])
        start = time.monotonic()
        summary = run_bleg(config)
        seconds[name] = time.monotonic() - start
        folds[name] = {v: [json.loads(p.read_text()) for p in sorted((run_dir / v).glob("seed*_fold*.json"))]
                       for v in config.variants}
        print(f"{name}: {seconds[name]:.0f} s; " + ", ".join(
            f"{v} accuracy {m['summary']['accuracy']['mean']:.3f}" for v, m in summary["models"].items()))
        print("\n".join(format_paired(summary["paired"], ["accuracy", "auc"])))
        # BLEG against its own GCN, on the same splits (the default reference is the best non-LM model).
        splits = cohort_splits(Cohort(cohort), config.folds)
        against_gcn = paired_comparison({v: folds[name][v] for v in ("gcn_alone", "bleg")}, splits, "gcn_alone")
        print("\n".join(format_paired(against_gcn, ["accuracy", "auc"])))
    if len(seconds) == 2:
        largest = max(float(np.max(np.abs(np.subtract(a["test_probabilities"], b["test_probabilities"]))))
                      for v in folds["plain"] for a, b in zip(folds["plain"][v], folds["fmgnn"][v]))
        print(f"largest difference in a test probability between the runs: {largest:.2e}")
        print(f"fmgnn against the plain loop: {100 * (seconds['fmgnn'] / seconds['plain'] - 1):+.1f}% wall time")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
