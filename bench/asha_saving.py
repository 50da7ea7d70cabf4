"""What ASHA saved in finished ``fmgnn tune`` sweeps: trial-epochs run against every trial run to the end.

    python bench/asha_saving.py runs/main/tune                       # the main job's sweep
    python bench/asha_saving.py runs/tune_bleg_nmda runs/tune_fifo   # an ASHA sweep beside a FIFO rerun

For each sweep folder: its scheduler, trials, the trial-epochs it ran (``results.parquet``:
``training_iteration`` of every trial), the budget without early stopping (trials x max epochs), the
saving, and the best mean validation loss it found (the sweep's objective; test folds are never read).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml


def sweep_row(folder: Path) -> list[str]:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    results = pd.read_parquet(folder / "results.parquet")
    summary = json.loads((folder / "summary.json").read_text())
    epochs = config["space"].get("stage3.epochs")
    if not isinstance(epochs, int):
        base = yaml.safe_load((Path(config["base_run"]) / "config.yaml").read_text())
        epochs = base["stage3"]["epochs"]
    ran, budget = int(results["training_iteration"].sum()), len(results) * epochs
    return [str(folder), config["scheduler"], str(len(results)), str(epochs), str(ran), str(budget),
            f"{100 * (ran / budget - 1):+.0f}%", f"{summary['best_val_loss']:.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="fmgnn tune sweep_dir folders")
    args = parser.parse_args()
    missing = [str(s) for s in args.sweeps if not (s / "summary.json").is_file()]
    if missing:
        sys.exit(f"not a finished sweep (no summary.json): {', '.join(missing)}; run `make run` or `fmgnn tune` first")
    print("| sweep | scheduler | trials | max epochs | trial-epochs run | without early stopping | saving | "
          "best validation loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for folder in args.sweeps:
        print("| " + " | ".join(sweep_row(folder)) + " |")


if __name__ == "__main__":
    main()
