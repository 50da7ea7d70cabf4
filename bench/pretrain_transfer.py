"""Transfer from pretraining, one row per pretrained model: what it was pretrained on, how well it reconstructs
its own held-out subjects, and what it gives FIMP and the foundation model alone on a task, paired with the
same models from random weights over the task's seeds (``*_vs_random_weights`` of the run's metrics.json).

    python bench/pretrain_transfer.py runs/s18/rest01_nyu20 runs/s18/rest01_nyu60 runs/s18/rest01_nyu175

Each argument is a ``fmgnn train fimp`` run whose ``pretrained`` is an ``fmgnn pretrain`` output.
"""

from __future__ import annotations

import argparse

import yaml

from fimp.run_record import FIMPRun, PretrainRun


def row(run_dir: str) -> str:
    run = FIMPRun(run_dir)
    metrics = run.metrics()
    if metrics is None:
        raise SystemExit(f"{run_dir}: no metrics.json (the run has not finished)")
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    pretrain = PretrainRun(config["pretrained"])
    record, settings = pretrain.metrics(), yaml.safe_load(pretrain.config_path().read_text())
    subjects = record.get("train_subjects") or settings.get("train_subjects") or "all"
    cells = [pretrain.model_dir.name, str(subjects), f"{record['val_r2']:.3f}", config["model"]["finetune"]]
    for model in ("fimp", "foundation"):
        random, gain = metrics["models"][model]["r2"], metrics.get(f"{model}_pretrained_vs_random_weights")
        pretrained_r2 = metrics["models"][f"{model}_pretrained"]["r2"]
        cells.append(f"{pretrained_r2['mean']:.3f} ± {pretrained_r2['std']:.3f} (random {random['mean']:.3f})")
        r2 = gain["r2"]
        cells.append(f"{r2['mean']:+.3f} [{r2['ci95_low']:+.3f}, {r2['ci95_high']:+.3f}], p = {r2['p_value']:.3g}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="fmgnn train fimp run folders")
    args = parser.parse_args()
    print("| pretrained model | training subjects | its held-out R^2 | finetune | FIMP-pretrained R^2 | "
          "FIMP: pretrained - random | foundation-pretrained R^2 | foundation: pretrained - random |")
    print("|---|---:|---:|---|---|---|---|---|")
    for run_dir in args.runs:
        print(row(run_dir))


if __name__ == "__main__":
    main()
