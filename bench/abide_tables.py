"""The ABIDE tables of bench/RESULTS.md from finished runs of ``fmgnn train baseline`` / ``fmgnn train bleg``.

    fmgnn ingest matrices ../shared/data/abide_aal116/matrices -o cohorts/abide.parquet \\
        participants=../shared/data/abide_aal116/Phenotypic_V1_0b_preprocessed1.csv id_column=SUB_ID \\
        label_column=DX_GROUP site_column=SITE_ID atlas=AAL116
    fmgnn train baseline cohort=cohorts/abide.parquet run_dir=runs/abide/gcn_10fold folds.seeds=[0,1,2]
    fmgnn train baseline cohort=cohorts/abide.parquet run_dir=runs/abide/lso folds.strategy=leave_site_out
    python bench/abide_tables.py runs/abide/gcn_10fold runs/abide/lso

Per run: each model's mean and std over splits, the paired differences against the run's reference
(mean, 95% interval, corrected resampled t-test p-value), and, for a leave-site-out run, each site's
accuracy per model. Reads only the runs' records (metrics.json, splits.json, per-split results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from fmgnn.cohort import Cohort

METRICS = ("accuracy", "balanced_accuracy", "auc")


def summary_rows(metrics: dict) -> list[str]:
    rows = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for model, record in metrics["models"].items():
        cells = [f"{record['summary'][m]['mean']:.3f} ± {record['summary'][m]['std']:.3f}" for m in METRICS]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return rows


def paired_rows(metrics: dict) -> list[str]:
    paired = metrics.get("paired")
    if not paired:
        return []
    rows = [f"Paired against {paired['reference']} ({paired['test']}):", "",
            "| model | metric | mean difference | 95% interval | p | splits |", "|---|---|---:|---|---:|---:|"]
    for model, by_metric in paired["models"].items():
        for metric, d in by_metric.items():
            rows.append(f"| {model} | {metric} | {d['mean']:+.3f} | [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] | "
                        f"{d['p_value']:.3g} | {d['n_splits']} |")
    return rows


def site_rows(run: Path, metrics: dict) -> list[str]:
    config = yaml.safe_load((run / "config.yaml").read_text())
    if config["folds"]["strategy"] != "leave_site_out":
        return []
    sites = Cohort(config["cohort"]).sites()
    models = list(metrics["models"])
    rows = ["| site | scans | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for split in json.loads((run / "splits.json").read_text()):
        name = f"seed{split['seed']}_fold{split['fold']}"
        site = sorted(set(sites[split["test"]]))
        scores = [json.loads((run / m / f"{name}.json").read_text())["metrics"]["accuracy"] for m in models]
        rows.append(f"| {'/'.join(site)} | {len(split['test'])} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        metrics = json.loads((run / "metrics.json").read_text())
        chance = metrics.get("chance", {}).get("majority_accuracy")
        print(f"## {run} (chance, the majority class of each test part: {np.round(chance, 3)})\n")
        print("\n".join([*summary_rows(metrics), "", *paired_rows(metrics), "", *site_rows(run, metrics)]))
        print()


if __name__ == "__main__":
    main()
