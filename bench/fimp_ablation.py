"""FIMP token-model ablation: each change's effect on the planted capability tasks and on bdtnp.

    python bench/fimp_ablation.py [--tasks neighbour_copy within_node both bdtnp] [--variants ...]
        [--models fimp foundation] [--epochs 30] [--seed 0]

Every variant is the token model of tests/test_fimp_capability.py (hidden 32, 4 heads, 1 layer,
batches of 128 target nodes, AdamW) with some settings changed; the planted tasks use 2,000 nodes,
bdtnp its 3,039 cells (15% of each cell's genes held out, kNN k 6, values standardised on training
cells). One torch thread per run, seed 0's node split; prints test R^2 on the hidden tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fimp.foundation import FoundationConfig  # noqa: E402
from fimp.reconstruction import ReconstructionConfig  # noqa: E402
from fimp.tasks.nodes import NodeTask, split_nodes  # noqa: E402
from fimp.tasks.planted import planted_task  # noqa: E402
from fimp.tasks.spatial import SpatialTaskConfig, load_spatial  # noqa: E402
from fimp.train_node_reconstruction import NodeReconstructionSpec, NodeReconstructionTask  # noqa: E402
from fimp.train_reconstruction import ReconstructionTrainConfig  # noqa: E402
from fmgnn.engine import run_local  # noqa: E402

BDTNP = REPO.parent / "shared" / "data" / "bdtnp"
# name -> (model settings, optimiser settings), each step adding to the one before it.
VARIANTS = {
    "as shipped (shared embedding, self-loop, lr 2e-3)": ({"per_token": False, "self_message": "mean"}, {"lr": 2e-3}),
    "+ per-token embedding and decoder": ({"per_token": True, "self_message": "mean"}, {"lr": 2e-3}),
    "+ root term for the node itself": ({"per_token": True, "self_message": "root"}, {"lr": 2e-3}),
    "+ lr 5e-3 (the shipped default now)": ({"per_token": True, "self_message": "root"}, {"lr": 5e-3}),
    "lr 1e-2": ({"per_token": True, "self_message": "root"}, {"lr": 1e-2}),
    "hidden 64": ({"per_token": True, "self_message": "root", "hidden": 64}, {"lr": 5e-3}),
    "2 foundation layers": ({"per_token": True, "self_message": "root", "layers": 2}, {"lr": 5e-3}),
    "no final LayerNorm": ({"per_token": True, "self_message": "root", "final_norm": False}, {"lr": 5e-3}),
    "weight decay 0.2": ({"per_token": True, "self_message": "root"}, {"lr": 5e-3, "weight_decay": 0.2}),
    "hidden 64, 8 heads": ({"per_token": True, "self_message": "root", "hidden": 64, "heads": 8}, {"lr": 5e-3}),
    "hidden 128, 8 heads": ({"per_token": True, "self_message": "root", "hidden": 128, "heads": 8}, {"lr": 5e-3}),
    "hidden 64, 8 heads, lr 2e-3": ({"per_token": True, "self_message": "root", "hidden": 64, "heads": 8},
                                    {"lr": 2e-3}),
    "hidden 64, 8 heads, 2 layers": ({"per_token": True, "self_message": "root", "hidden": 64, "heads": 8,
                                      "layers": 2}, {"lr": 5e-3}),
}


def load(task_name: str, seed: int) -> tuple[NodeTask, float]:
    if task_name == "bdtnp":
        return load_spatial(SpatialTaskConfig(path=str(BDTNP), k=6)), 0.15
    return planted_task(task_name, n_nodes=2000, seed=seed), 0.0  # planted tasks carry their own masks


def test_r2(task: NodeTask, mask_ratio: float, kind: str, settings: dict, optim: dict, epochs: int, seed: int) -> float:
    settings = dict(settings)
    shape = {k: settings.pop(k) for k in ("hidden", "heads", "layers", "final_norm") if k in settings}
    hidden = shape.get("hidden", 32)
    foundation = FoundationConfig(hidden=hidden, heads=shape.get("heads", 4), layers=shape.get("layers", 1),
                                  intermediate=4 * hidden,
                                  final_norm=shape.get("final_norm", True))
    config = ReconstructionConfig(kind=kind, n_tokens=task.x.shape[1], token_values=task.x.shape[2],
                                  foundation=foundation, **settings)
    train, val, test = split_nodes(task.num_nodes, seed, 0.15, 0.15)
    optim_config = ReconstructionTrainConfig(epochs=epochs, batch_size=128, patience=epochs, **optim)
    spec = NodeReconstructionSpec(task, train, val, test, mask_ratio, config, optim_config, seed=seed)
    return run_local([NodeReconstructionTask(f"{task.name}-{kind}", spec)])[0]["test_r2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["neighbour_copy", "within_node", "both", "bdtnp"])
    parser.add_argument("--variants", nargs="+", type=int, default=list(range(len(VARIANTS))),
                        help="indices into the variant list")
    parser.add_argument("--models", nargs="+", default=["fimp", "foundation"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(VARIANTS)
    print(f"| variant | model | {' | '.join(args.tasks)} | seconds |")
    print(f"|---|---|{'---:|' * len(args.tasks)}---:|")
    tasks = {name: load(name, args.seed) for name in args.tasks}
    for index in args.variants:
        settings, optim = VARIANTS[names[index]]
        for kind in args.models:
            started, scores = time.monotonic(), []
            for name in args.tasks:
                task, ratio = tasks[name]
                scores.append(test_r2(task, ratio, kind, settings, optim, args.epochs, args.seed))
            print(f"| {names[index]} | {kind} | {' | '.join(f'{s:.3f}' for s in scores)} | "
                  f"{time.monotonic() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
