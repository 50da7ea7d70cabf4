"""``fmgnn report OUT_DIR``: the main job's report, ``report.html`` and ``figures.json``, from its outputs.

    fmgnn report runs/main

Reads what the stages wrote under ``OUT_DIR`` (``augment/``, ``bleg/``, ``tune/``, ``foundation/``,
``fimp/``) through their run records (``AugmentOutput``, ``BLEGRun``, ``SweepRun``, ``PretrainRun``,
``FIMPRun``), never by their file names, and skips the stages that did not run. The HTML file is
self-contained (figures embedded, no external resources); ``figures.json`` holds each figure's data.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from bleg.augment.run_record import AugmentOutput
from bleg.run_record import BLEGRun
from fimp.run_record import FIMPRun, PretrainRun
from fmgnn.evaluation.metrics import mean_std
from fmgnn.evaluation.paired import format_relative
from fmgnn.io import atomic_write_json, atomic_write_text
from fmgnn.plots import mean_curves, pooled_predictions
from fmgnn.report_html import Section, Table, render_html
from tune.run_record import SweepRun

log = logging.getLogger("fmgnn.report")

Figures = dict[str, dict[str, Any]]
CLASSIFICATION = ("accuracy", "balanced_accuracy", "auc", "f1")


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(summary: dict[str, Any], key: str) -> str:
    return mean_std(summary[key])


def overview_section(out_dir: Path, summary: dict[str, Any]) -> Section:
    section = Section("Cohort and run")
    cohort = summary.get("cohort") or {}
    if cohort:
        section.tables.append(Table("cohort", ["field", "value"], [
            ["name", cohort.get("name", "")], ["subjects", cohort.get("n_subjects", "")],
            ["regions", cohort.get("n_rois", "")], ["labels", json.dumps(cohort.get("label_counts", {}))]]))
    graphs = summary.get("graphs")
    if graphs:
        section.tables.append(Table("graphs as the models see them", ["measure", "value"], [
            ["graphs", graphs["n_graphs"]], ["density", graphs["density_mean"]],
            ["mean degree", graphs["mean_degree"]]]))
    timings = summary.get("timings_s") or {}
    if timings:
        section.tables.append(Table("stage times of the last run (s; a resumed stage counts only what was left)",
                                    ["stage", "seconds"], [[k.removesuffix("_s"), v] for k, v in timings.items()]))
    return section


def augment_section(out_dir: Path) -> Section | None:
    output = AugmentOutput(out_dir / "augment")
    summaries = output.summaries()
    if not summaries:
        return None
    section = Section("Stage 1: LLM descriptions (augment)")
    rows = []
    for s in summaries:
        rows.append([s["run_id"], s["engine"], s["model"], s["rows_written"], s["error_rows"],
                     s["skipped_already_answered"], s["seconds"], s["subjects_per_s"], s["output_tokens_per_s"]])
    section.tables.append(Table("augmentation runs (a rerun skips answered subjects)",
                                ["run", "engine", "model", "written", "errors", "skipped", "seconds", "subjects/s",
                                 "output tokens/s"], rows))
    quality = summaries[-1].get("quality")
    if quality:
        shares = quality["rejected_share"]
        section.tables.append(Table(
            f"answer quality over {quality['answers']} answers of this prompt and model (share rejected per reason)",
            list(shares), [[f"{v:.1%}" for v in shares.values()]]))
        if quality.get("valid"):
            section.tables.append(Table("how subject-specific the valid texts are (rules engine: the subject's own "
                                        "measures in words)",
                                        ["distinct conclusions", "distinct key-feature lists",
                                         "mean pairwise similarity (MiniLM)", "rules engine: distinct texts",
                                         "rules engine: similarity"],
                                        [[f"{quality['distinct_conclusions_share']:.0%}",
                                          f"{quality['distinct_key_features_share']:.0%}",
                                          quality.get("mean_pairwise_similarity"),
                                          f"{quality.get('rules_engine_distinct_share', 0):.0%}",
                                          quality.get("rules_engine_similarity")]]))
    table = output.rows().to_pylist()
    valid = [r for r in table if not r.get("error")][:3]
    if valid:
        section.tables.append(Table("example descriptions", ["scan", "key features", "conclusion"], [
            [r["scan_id"], "; ".join(r["key_features"] or []), r["conclusion"]] for r in valid]))
    return section


def bleg_section(out_dir: Path, figures: Figures) -> Section | None:
    run = BLEGRun(out_dir / "bleg")
    if not run.finished():
        return None
    metrics = run.metrics()
    section = Section("BLEG: stages 2 and 3, with its ablations (test folds)")
    section.notes.append(f"LM {metrics['lm']}; every model on the same stratified folds; mean ± std over test folds.")
    if metrics.get("chance"):
        sizes = metrics["chance"]["test_sizes"]
        section.notes.append(f"Always answering the training part's majority class scores accuracy "
                             f"{metrics['chance']['majority_accuracy']:.3f}; {len(sizes)} test folds of "
                             f"{min(sizes)}-{max(sizes)} scans.")
    section.tables.append(Table("classification", ["model", *CLASSIFICATION, "folds", "trainer seconds"], [
        [name, *[_mean_std(m["summary"], k) for k in CLASSIFICATION], m["summary"]["accuracy"]["n"],
         m["fold_seconds"]] for name, m in metrics["models"].items()]))
    if metrics.get("paired"):
        section.tables.append(paired_table(f"against {metrics['paired']['reference']}, split by split", [
            value for by_metric in metrics["paired"]["models"].values() for value in by_metric.values()]))
    if metrics.get("permutation"):
        permutation = metrics["permutation"]
        section.tables.append(Table(f"permutation test: {permutation['n']} shuffles of the labels among subjects, "
                                    "whole pipeline rerun", ["model", "accuracy", "shuffled (mean)", "p"], [
            [name, round(m["score"], 3), round(m["permuted_mean"], 3), round(m["p_value"], 4)]
            for name, m in permutation["models"].items()]))
    folds = {name: run.fold_results(name) for name in metrics["models"]}
    roc = {}
    for name, runs in folds.items():
        labels, probabilities = pooled_predictions(runs)
        if probabilities.shape[1] == 2 and len(set(labels)) == 2:
            fpr, tpr, _ = roc_curve(labels, probabilities[:, 1])
            roc[name] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist(),
                         "auc_mean": metrics["models"][name]["summary"]["auc"]["mean"]}
    if roc:
        figures["bleg_roc"] = {"kind": "roc", "title": "test ROC, folds pooled", "series": roc}
        section.figures.append("bleg_roc")
    curves = {name: mean_curves(runs, ("train_loss", "val_loss")) for name, runs in folds.items()
              if any(r.get("history") for r in runs)}
    if curves:
        figures["bleg_learning_curves"] = {"kind": "curves", "title": "stage 3 learning curves (mean over folds)",
                                           "x": "epoch", "y": ["train_loss", "val_loss"], "series": curves}
        section.figures.append("bleg_learning_curves")
    return section


def tune_section(out_dir: Path, figures: Figures) -> Section | None:
    sweep = SweepRun(out_dir / "tune")
    summary = sweep.summary()
    if summary is None:
        return None
    section = Section("Ray Tune: stage 3 sweep (validation folds only)")
    section.notes.append(f"{summary['trials']} trials, {summary['trial_epochs']} trial-epochs; objective: mean "
                         f"validation cross-entropy over the folds; best {summary['best_val_loss']:.4f}.")
    section.tables.append(Table("best configuration", ["parameter", "value"],
                                [[k, v] for k, v in summary["best_params"].items()]))
    trials = sweep.trials()
    if trials:
        keys = sorted({k for t in trials.values() for k in t["params"]})
        section.tables.append(Table("trials", ["trial", *keys, "epochs", "best validation loss"], [
            [trial, *[t["params"].get(k, "") for k in keys], len(t["epoch"]), min(t["val_loss"])]
            for trial, t in sorted(trials.items(), key=lambda kv: min(kv[1]["val_loss"]))]))
        figures["sweep_trials"] = {"kind": "curves", "title": "trials: validation loss per epoch (ASHA stops the "
                                   "poor ones)", "x": "epoch", "y": ["val_loss"],
                                   "series": {k: {"epoch": t["epoch"], "val_loss": t["val_loss"]}
                                              for k, t in trials.items()}}
        section.figures.append("sweep_trials")
    importance = sweep.importance()
    if importance:
        figures["sweep_importance"] = {"kind": "bars", "title": "parameter importance (fANOVA)",
                                       "xlabel": "importance", "values": importance}
        section.figures.append("sweep_importance")
    nested = summary.get("nested")
    if nested:
        section.tables.append(Table("nested estimate: each test fold with the configuration its own validation "
                                    "scans chose, against the default", ["configuration", *CLASSIFICATION],
                                    [[name, *[_mean_std(m["summary"], k) for k in CLASSIFICATION]]
                                     for name, m in nested["models"].items()]))
        section.tables.append(paired_table("nested against the default, fold by fold", [
            value for by_metric in nested["paired"]["models"].values() for value in by_metric.values()]))
    return section


def paired_table(caption: str, differences: list[dict[str, Any]]) -> Table:
    """Paired differences (``fmgnn.evaluation.paired.PairedDifference`` records), one row each."""
    def number(x: float, fmt: str) -> str:
        return "n/a" if x is None or x != x else format(x, fmt)

    def interval(low: float, high: float) -> str:  # one split has none
        return "n/a" if number(low, "") == "n/a" else f"{low:+.3f} to {high:+.3f}"

    return Table(caption, ["model", "reference", "metric", "mean difference", "95% interval", "p", "splits"], [
        [d["model"], d["reference"], d["metric"], number(d["mean"], "+.3f"),
         interval(d["ci95_low"], d["ci95_high"]), number(d["p_value"], ".3g"),
         d["n_splits"]] for d in differences])


def fimp_section(out_dir: Path, figures: Figures) -> Section | None:
    run = FIMPRun(out_dir / "fimp")
    metrics = run.metrics()
    if metrics is None:
        return None
    section = Section("FIMP: masked fMRI window reconstruction (test scans)")
    section.tables.append(Table("reconstruction of the hidden windows", ["model", "MSE", "R^2", "seconds"], [
        [name, _mean_std(m, "mse"), _mean_std(m, "r2"), m["seconds"]] for name, m in metrics["models"].items()]))
    comparisons = {k: v for k, v in metrics.items()
                   if k.endswith(("_vs_best_baseline", "_vs_mlp", "_vs_random_weights"))}
    paired = [v[m] for v in comparisons.values() for m in ("r2", "mse")]
    paired += [v["equal_time"]["val_r2"] for v in comparisons.values() if "val_r2" in v.get("equal_time", {})]
    if paired:
        section.tables.append(paired_table(
            "against the best baseline, the foundation model alone against the MLP (the same tokens), and each "
            "pretrained model against itself from random weights, paired over seeds; for MSE, negative is better; "
            "val_r2: validation R^2 within the baseline's training time",
            paired))
        for key, value in metrics.items():
            if key.endswith("_vs_best_baseline"):
                section.notes.append(f"{key.removesuffix('_vs_best_baseline')} against {value['baseline']}: "
                                     f"{format_relative(value.get('relative_r2'))}.")
    pretrain = PretrainRun(out_dir / "foundation").metrics()
    if pretrain:
        corpus = "; ".join(f"{source['path']} ({source['kind']}, {source['subjects']} subjects, "
                           f"{source['sequences']} sequences)" for source in pretrain.get("corpus", []))
        section.notes.append(f"Foundation model pretrained on other data than FIMP's (masked windows, no graph): "
                             f"{corpus or 'a separate cohort'}; held-out MSE {pretrain['val_mse']:.4f}, "
                             f"R^2 {pretrain['val_r2']:.3f}, {pretrain['epochs']} epochs.")
        figures["pretrain_curve"] = {"kind": "curves", "title": "foundation pretraining", "x": "epoch",
                                     "y": ["train_loss", "val_loss"],
                                     "series": {"foundation": mean_curves([pretrain], ("train_loss", "val_loss"))}}
        section.figures.append("pretrain_curve")
    seed = metrics["seeds"][0]
    runs = {name: run.seed_result(name, seed) for name in metrics["models"]}
    figures["fimp_learning_curves"] = {"kind": "curves", "title": f"reconstruction learning curves (seed {seed})",
                                       "x": "epoch", "y": ["train_loss", "val_loss"],
                                       "series": {n: mean_curves([r], ("train_loss", "val_loss"))
                                                  for n, r in runs.items()}}
    section.figures.append("fimp_learning_curves")
    examples = {}
    for name in metrics["models"]:
        example = run.example(name, seed)
        window = int(example["target"].shape[1])
        examples[name] = {"true": example["target"].reshape(-1).round(4).tolist(),
                          "predicted": example["predicted"].reshape(-1).round(4).tolist(),
                          "hidden": np.flatnonzero(example["mask"]).tolist(), "window": window}
    figures["reconstruction"] = {"kind": "reconstruction", "xlabel": "time point (hidden windows shaded)",
                                 "title": f"one test region's series, true vs predicted (seed {seed})",
                                 "series": examples}
    section.figures.append("reconstruction")
    return section


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``figures.json`` into ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    summary = _read(out_dir / "summary.json") or {}
    figures: Figures = {}
    sections = [overview_section(out_dir, summary), augment_section(out_dir), bleg_section(out_dir, figures),
                tune_section(out_dir, figures), fimp_section(out_dir, figures)]
    config = (out_dir / "config.yaml").read_text() if (out_dir / "config.yaml").is_file() else ""
    versions = _read(out_dir / "versions.json") or {}
    footer = "versions: " + json.dumps(versions, indent=1) + "\n\nconfig.yaml:\n" + config
    page = render_html(f"fmgnn report: {out_dir.name}", [s for s in sections if s is not None], figures, footer)
    atomic_write_json(out_dir / "figures.json", figures)
    atomic_write_text(out_dir / "report.html", page)
    log.info("report: %s (%d figures)", out_dir / "report.html", len(figures))
    return out_dir / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmgnn report", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="the main job's out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (Path(args.out_dir) / "summary.json").is_file():
        parser.error(f"{args.out_dir}: no summary.json (not a finished fmgnn run out_dir)")
    print(write_report(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

