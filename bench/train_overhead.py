"""Training throughput: the GCN baseline's loop in plain PyTorch against the same loop under Ray Train.

    python bench/train_overhead.py --subjects 512 --epochs 20

The same training function (``fmgnn.baselines.train_gcn.train_loop``: per-epoch validation,
checkpoint and report) runs (a) in this process with Ray Train's local mode
(``ScalingConfig(num_workers=0)``), (b) under a TorchTrainer with 1 worker and (c) with 2 DDP
workers; and a plain PyTorch loop without checkpoints or reports gives the floor. Graphs/s counts
training graphs processed per second over the whole fit, start-up included, and the
steady-state epochs/s excludes the first epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmgnn.baselines.gcn import GCNClassifier, GCNConfig  # noqa: E402
from fmgnn.baselines.train_gcn import GCNTrainSpec, load_graphs, train_epoch, train_loop  # noqa: E402
from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.evaluation.splits import FoldConfig, make_splits  # noqa: E402
from fmgnn.graphs import GraphConfig  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402
from pipelines.ray_session import RayConfig, start_ray  # noqa: E402
from pipelines.trainers import make_trainer  # noqa: E402


def plain_loop(spec: GCNTrainSpec, cohort: Cohort) -> float:
    """Seconds for the epochs without Ray, checkpoints or reports."""
    torch.manual_seed(0)
    start = time.perf_counter()
    graphs = load_graphs(cohort, spec.split.train, spec.graph)
    from torch_geometric.loader import DataLoader

    loader = DataLoader(graphs, batch_size=spec.model.batch_size, shuffle=True)
    model = GCNClassifier(graphs[0].num_node_features, cohort.n_classes, spec.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.model.lr)
    for _ in range(spec.model.epochs):
        train_epoch(model, loader, optimizer)
    return time.perf_counter() - start


def ray_fit(spec: GCNTrainSpec, workers: int, storage: str, name: str) -> float:
    config = RayConfig(num_workers=workers, cpus_per_worker=1.0)
    start = time.perf_counter()
    make_trainer(train_loop, spec, name, config, storage).fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fmgnn-bench-"))
    cohort_path = work / "cohort.parquet"
    ingest_synthetic(cohort_path, SyntheticConfig(n_subjects=args.subjects, n_timepoints=100, store="fc", seed=0))
    cohort = Cohort(cohort_path)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=5, seeds=[0]))[0]
    spec = GCNTrainSpec(str(cohort_path), split, GraphConfig(),
                        GCNConfig(epochs=args.epochs, patience=args.epochs, batch_size=32))
    n_graphs = len(split.train) * args.epochs
    start_ray(RayConfig())
    rows = [("plain PyTorch loop", plain_loop(spec, cohort))]
    for workers, label in ((0, "Ray Train, local mode"), (1, "Ray Train, 1 worker"), (2, "Ray Train, 2 workers")):
        rows.append((label, ray_fit(spec, workers, str(work / "ray"), f"bench-{workers}-{os.getpid()}")))
    base = rows[0][1]
    print(f"{args.subjects} subjects ({len(split.train)} training graphs), {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs")
    print("| run | seconds | graphs/s | vs plain |\n|---|---:|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {n_graphs / seconds:.0f} | {100 * (seconds / base - 1):+.0f}% |")


if __name__ == "__main__":
    main()
