"""The main job: sample cohort -> graphs -> baselines, on the embedded default Ray.

    python -m pipelines.main                                   # built-in synthetic cohort
    python -m pipelines.main --config configs/main.yaml cohort=cohorts/nmda_aal.parquet
    ray job submit --working-dir . -- python -m pipelines.main out_dir=/mnt/shared/runs/main

Outputs in ``out_dir``: ``cohort.parquet`` (when generated), ``graphs.json`` (what the graph
builder made of the cohort), ``baselines/`` (a full ``fmgnn train baseline`` run directory),
``summary.json`` with the time of every stage. A rerun reuses the generated cohort when its
config is unchanged and skips finished folds.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmgnn.cohort import Cohort
from fmgnn.config import load_config, save_config
from fmgnn.graphs import GraphConfig, edge_mask
from fmgnn.io import atomic_write_json, environment_record
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from pipelines.errors import exit_on_input_error
from pipelines.train import BaselineJobConfig, run_baselines

log = logging.getLogger("fmgnn.main")


@dataclass
class MainJobConfig:
    """Args:
        out_dir: Output directory of the job.
        cohort: A cohort Parquet file to use instead of generating the sample cohort.
        synthetic: The built-in sample cohort (used when ``cohort`` is None).
        baseline: Baselines settings; its ``cohort`` and ``run_dir`` are filled in by the job.
    """

    out_dir: str = "runs/main"
    cohort: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    baseline: BaselineJobConfig = field(default_factory=BaselineJobConfig)


def sample_cohort(config: SyntheticConfig, path: Path) -> Path:
    """Generate the sample cohort, or reuse the one at ``path`` made from the same config."""
    if path.is_file():
        provenance = Cohort(path).metadata.provenance
        if provenance.get("config") == asdict(config):
            log.info("reusing the sample cohort at %s (same config)", path)
            return path
    report = ingest_synthetic(path, config)
    for line in report.lines():
        log.info(line)
    return path


def graph_summary(cohort: Cohort, config: GraphConfig) -> dict[str, Any]:
    """Edges, degrees and density of every subject's graph, as the models will see them."""
    counts = []
    for start in range(0, len(cohort), 256):
        fc = torch.as_tensor(cohort.fc(np.arange(start, min(start + 256, len(cohort)))))
        counts.append(edge_mask(fc, config).sum(dim=(1, 2)).numpy())  # directed edges per graph, as built
    n_edges = np.concatenate(counts)
    r = cohort.n_rois
    undirected = (n_edges - (r if config.self_loops else 0)) / 2
    return {
        "n_graphs": len(n_edges), "n_nodes": r, "graph_config": asdict(config),
        "directed_edges_mean": float(n_edges.mean()),
        "density_mean": float((undirected / (r * (r - 1) / 2)).mean()),
        "mean_degree": float((2 * undirected / r).mean()),
    }


def run_main(config: MainJobConfig) -> dict[str, Any]:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    atomic_write_json(out_dir / "versions.json", environment_record())
    timings: dict[str, float] = {}

    start = time.monotonic()
    cohort_path = Path(config.cohort) if config.cohort else sample_cohort(config.synthetic, out_dir / "cohort.parquet")
    cohort = Cohort(cohort_path)
    timings["ingest_s"] = time.monotonic() - start
    log.info("[1/3] cohort %s: %s", cohort.path, cohort.summary()["label_counts"])

    start = time.monotonic()
    graphs = graph_summary(cohort, config.baseline.graph)
    atomic_write_json(out_dir / "graphs.json", graphs)
    timings["graphs_s"] = time.monotonic() - start
    log.info("[2/3] graphs: %d graphs, %d nodes, mean degree %.1f", graphs["n_graphs"], graphs["n_nodes"],
             graphs["mean_degree"])

    start = time.monotonic()
    config.baseline.cohort = str(cohort_path)
    config.baseline.run_dir = str(out_dir / "baselines")
    log.info("[3/3] baselines %s", ", ".join(config.baseline.models))
    baselines = run_baselines(config.baseline)
    timings["baselines_s"] = time.monotonic() - start

    summary = {"cohort": cohort.summary(), "graphs": graphs,
               "baselines": {m: r["summary"] for m, r in baselines["models"].items()},
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "total_s": round(sum(timings.values()), 1)}
    atomic_write_json(out_dir / "summary.json", summary)
    log.info("main job done in %.0f s; outputs in %s", summary["total_s"], out_dir)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmgnn run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: configs/main.yaml when present)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. synthetic.n_subjects=500")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config_path = args.config or ("configs/main.yaml" if Path("configs/main.yaml").is_file() else None)
    return exit_on_input_error("run", lambda: run_main(load_config(MainJobConfig, config_path, args.overrides)))


if __name__ == "__main__":
    raise SystemExit(main())
