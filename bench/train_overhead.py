"""Training throughput: the one training loop in plain PyTorch against the same loop under Ray Train.

    python bench/train_overhead.py --subjects 512 --epochs 20 60

The GCN baseline's task (``fmgnn.baselines.train_gcn.GCNTask``) runs through ``fmgnn.engine.fit``
(a) in this process (``run_local``, a checkpoint file per epoch, no Ray), (b) under a TorchTrainer with
1 worker and (c) with 2 DDP workers. Each runs twice, for a short and a long number of epochs: the
difference gives the steady-state seconds per epoch (training graphs/s, and the overhead per epoch
against the plain loop), the rest is the fixed start-up (worker processes, process group, data loading).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmgnn.baselines.gcn import GCNConfig  # noqa: E402
from fmgnn.baselines.train_gcn import GCNTask  # noqa: E402
from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.engine import run_local  # noqa: E402
from fmgnn.evaluation.splits import FoldConfig, make_splits  # noqa: E402
from fmgnn.graphs import GraphConfig  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402
from pipelines.ray_session import RayConfig, start_ray  # noqa: E402
from pipelines.trainers import make_trainer  # noqa: E402


def plain_loop(task: GCNTask, folder: Path) -> float:
    start = time.perf_counter()
    run_local([task], folder)
    return time.perf_counter() - start


def ray_fit(task: GCNTask, workers: int, storage: str, name: str) -> float:
    config = RayConfig(num_workers=workers, cpus_per_worker=1.0)
    start = time.perf_counter()
    make_trainer([task], name, config, storage).fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=512)
    parser.add_argument("--epochs", type=int, nargs=2, default=[20, 60], metavar=("SHORT", "LONG"))
    args = parser.parse_args()
    short, long = args.epochs
    work = Path(tempfile.mkdtemp(prefix="fmgnn-bench-"))
    cohort_path = work / "cohort.parquet"
    ingest_synthetic(cohort_path, SyntheticConfig(n_subjects=args.subjects, n_timepoints=100, store="fc", seed=0))
    cohort = Cohort(cohort_path)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=5, seeds=[0]))[0]

    def task(epochs: int) -> GCNTask:
        return GCNTask("gcn", str(cohort_path), split, GraphConfig(),
                       GCNConfig(epochs=epochs, patience=epochs, batch_size=32))

    start_ray(RayConfig())
    runs = {"plain loop (fmgnn.engine, no Ray)": [plain_loop(task(e), work / f"plain-{e}") for e in (short, long)]}
    for workers, label in ((1, "Ray Train, 1 worker"), (2, "Ray Train, 2 workers")):
        runs[label] = [ray_fit(task(e), workers, str(work / "ray"), f"bench-{workers}-{e}-{os.getpid()}")
                       for e in (short, long)]
    per_epoch = {label: (t_long - t_short) / (long - short) for label, (t_short, t_long) in runs.items()}
    base = per_epoch["plain loop (fmgnn.engine, no Ray)"]
    print(f"{args.subjects} subjects ({len(split.train)} training graphs), {short} and {long} epochs, "
          f"{os.cpu_count()} CPUs")
    print(f"| run | s at {short} epochs | s at {long} epochs | start-up s | s/epoch | graphs/s | per-epoch overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (t_short, t_long) in runs.items():
        startup = t_short - short * per_epoch[label]
        print(f"| {label} | {t_short:.1f} | {t_long:.1f} | {startup:.1f} | {per_epoch[label]:.3f} | "
              f"{len(split.train) / per_epoch[label]:.0f} | {100 * (per_epoch[label] / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
