"""``fmgnn predict``: score a cohort with trained BLEG students, from the graphs alone.

    fmgnn predict cohort=cohorts/new.parquet model=runs/bleg/folds/seed0_fold0/bleg/model
    fmgnn predict cohort=cohorts/new.parquet run_dir=runs/bleg variant=bleg   # mean over the run's folds

With ``run_dir`` every fold's model of ``variant`` scores every subject and the class
probabilities are averaged (none of those models saw the new subjects). Writes ``output``
(Parquet: subject, predicted class, probabilities) and, beside it, ``<output>.json`` with the
models used and the metrics against the cohort's labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bleg.student import BLEGStudent
from bleg.run_record import BLEGRun
from bleg.train_student import GRAPH_CONFIG_NAME
from fmgnn.baselines.train_gcn import predict
from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import LocalPath, OptionalLocalPath, config_from_dict
from fmgnn.evaluation.metrics import classification_metrics
from fmgnn.graph_stream import PartGraphs
from fmgnn.graphs import GraphConfig
from fmgnn.io import atomic_path, atomic_write_json, environment_record
from pipelines.command import job_main

log = logging.getLogger("fmgnn.predict")


@dataclass
class PredictConfig:
    """Args:
        cohort: Cohort Parquet file to score.
        model: One saved model folder (``.../<variant>/model``).
        run_dir: A ``fmgnn train bleg`` run: every fold's model of ``variant`` is used.
        variant: Which variant of ``run_dir``.
        output: Predictions Parquet file.
        batch_size: Graphs per forward pass.
    """

    cohort: LocalPath = ""
    model: OptionalLocalPath = None
    run_dir: OptionalLocalPath = None
    variant: str = "bleg"
    output: LocalPath = "predictions.parquet"
    batch_size: int = 64


def model_folders(config: PredictConfig) -> list[Path]:
    if bool(config.model) == bool(config.run_dir):
        raise CohortError("give either model=<saved model folder> or run_dir=<fmgnn train bleg run>")
    if config.model:
        return [Path(config.model)]
    return BLEGRun(config.run_dir).model_folders(config.variant)


def score(model_dir: Path, cohort: Cohort, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) of one saved model."""
    model = BLEGStudent.from_pretrained(model_dir)
    graph = config_from_dict(GraphConfig, json.loads((model_dir / GRAPH_CONFIG_NAME).read_text()))
    if model.encoder.config.in_channels != cohort.n_rois and graph.node_features == "fc_row":
        raise CohortError(f"{cohort.path}: {cohort.n_rois} regions, but {model_dir} was trained on graphs of "
                          f"{model.encoder.config.in_channels} regions")
    if model.config.n_classes != cohort.n_classes:
        raise CohortError(f"{cohort.path}: {cohort.n_classes} classes, {model_dir} predicts {model.config.n_classes}")
    graphs = PartGraphs(cohort, np.arange(len(cohort)), graph)  # a chunk at a time when the cohort is large
    probabilities, _, _ = predict(model, graphs.batches(batch_size))
    return probabilities


def run_predict(config: PredictConfig) -> dict[str, Any]:
    if not config.cohort:
        raise CohortError("cohort: give the cohort Parquet file to score")
    cohort = Cohort(config.cohort)
    folders = model_folders(config)
    probabilities = np.mean([score(folder, cohort, config.batch_size) for folder in folders], axis=0)  # (N, C)
    names = cohort.metadata.label_names
    table = pa.table({
        "scan_id": [str(s) for s in cohort.scan_ids()],
        "subject_id": [str(s) for s in cohort.subject_ids()],
        "predicted": probabilities.argmax(1),
        "predicted_name": [names[i] for i in probabilities.argmax(1)],
        **{f"p_{name}": probabilities[:, c] for c, name in enumerate(names)},
    })
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        pq.write_table(table, tmp)
    record = {"cohort": str(cohort.path), "models": [str(f) for f in folders], "n_subjects": len(cohort),
              "metrics": classification_metrics(cohort.labels(), probabilities), "versions": environment_record()}
    atomic_write_json(output.with_suffix(".json"), record)
    log.info("%d subjects scored by %d model(s) -> %s; accuracy against the cohort's labels %.3f", len(cohort),
             len(folders), output, record["metrics"]["accuracy"])
    return record


def main(argv: list[str] | None = None) -> int:
    return job_main("predict", __doc__, argv, job=(PredictConfig, run_predict))


if __name__ == "__main__":
    raise SystemExit(main())
