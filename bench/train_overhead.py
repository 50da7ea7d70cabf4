"""Training throughput: the GCN baseline's loop in plain PyTorch against the same loop under Ray Train.

    python bench/train_overhead.py --subjects 512 --epochs 20 60

The same training function (``fmgnn.baselines.train_gcn.train_loop``: per-epoch validation,
checkpoint and report) runs (a) in this process with Ray Train's local mode
(``ScalingConfig(num_workers=0)``), (b) under a TorchTrainer with 1 worker and (c) with 2 DDP
workers; and a plain PyTorch loop without checkpoints or reports gives the floor. Each runs twice,
for a short and a long number of epochs: the difference gives the steady-state seconds per epoch
(training graphs/s, and the overhead per epoch against the plain loop), the rest is the fixed
start-up (worker processes, process group, data loading).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmgnn.baselines.gcn import GCNClassifier, GCNConfig  # noqa: E402
from fmgnn.baselines.train_gcn import GCNTrainSpec, load_graphs, predict, train_epoch, train_loop  # noqa: E402
from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.evaluation.metrics import classification_metrics  # noqa: E402
from fmgnn.evaluation.splits import FoldConfig, make_splits  # noqa: E402
from fmgnn.graphs import GraphConfig  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402
from pipelines.ray_session import RayConfig, start_ray  # noqa: E402
from pipelines.trainers import make_trainer  # noqa: E402


def plain_loop(spec: GCNTrainSpec, cohort: Cohort, folder: Path) -> float:
    """Seconds for ``train_loop``'s work without Ray: per epoch train, validate, keep the best state and
    save a checkpoint file (Ray Train adds the report and the checkpoint's upload to storage)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    graphs = load_graphs(cohort, spec.split.train, spec.graph)
    val_graphs = load_graphs(cohort, spec.split.val, spec.graph)
    loader = DataLoader(graphs, batch_size=spec.model.batch_size, shuffle=True)
    model = GCNClassifier(graphs[0].num_node_features, cohort.n_classes, spec.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.model.lr, weight_decay=spec.model.weight_decay)
    best_val_loss, best_state = float("inf"), None
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in range(spec.model.epochs):
        train_epoch(model, loader, optimizer)
        probabilities, y, val_loss = predict(model, val_graphs, spec.model.batch_size)
        classification_metrics(y, probabilities)
        if val_loss < best_val_loss:
            best_val_loss, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "best_state": best_state}, folder / f"checkpoint-{epoch:03d}.pt")
    return time.perf_counter() - start


def ray_fit(spec: GCNTrainSpec, workers: int, storage: str, name: str) -> float:
    config = RayConfig(num_workers=workers, cpus_per_worker=1.0)
    start = time.perf_counter()
    make_trainer(train_loop, spec, name, config, storage).fit()
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

    def spec(epochs: int) -> GCNTrainSpec:
        return GCNTrainSpec(str(cohort_path), split, GraphConfig(),
                            GCNConfig(epochs=epochs, patience=epochs, batch_size=32))

    start_ray(RayConfig())
    runs = {"plain PyTorch loop": [plain_loop(spec(e), cohort, work / f"plain-{e}") for e in (short, long)]}
    for workers, label in ((0, "Ray Train, local mode"), (1, "Ray Train, 1 worker"), (2, "Ray Train, 2 workers")):
        runs[label] = [ray_fit(spec(e), workers, str(work / "ray"), f"bench-{workers}-{e}-{os.getpid()}")
                       for e in (short, long)]
    per_epoch = {label: (t_long - t_short) / (long - short) for label, (t_short, t_long) in runs.items()}
    base = per_epoch["plain PyTorch loop"]
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
