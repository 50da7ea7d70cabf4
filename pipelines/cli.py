"""The ``fmgnn`` command: one subcommand per job, each also runnable as ``python -m pipelines.<job>``.

    fmgnn ingest corrpops ../shared/data/corrpops/nmda_aal.npz -o cohorts/nmda_aal.parquet
    fmgnn augment cohort=cohorts/nmda_aal.parquet output=runs/augment/nmda
    fmgnn train baseline cohort=cohorts/nmda_aal.parquet
    fmgnn train bleg cohort=cohorts/nmda_aal.parquet texts.output=runs/augment/nmda
    fmgnn predict cohort=cohorts/new.parquet run_dir=runs/bleg
    fmgnn run                      # the main job on the built-in sample cohort
    fmgnn submit --address http://HEAD:8265 -- train bleg cohort=/mnt/shared/c.parquet   # on a cluster
"""

from __future__ import annotations

import sys
from importlib import import_module

COMMANDS = {
    "ingest": ("pipelines.ingest", "write a cohort Parquet file from a source format"),
    "augment": ("pipelines.augment", "LLM descriptions of every subject's graph (BLEG stage 1)"),
    "train": ("pipelines.train", "train models on a cohort (baseline, bleg)"),
    "predict": ("pipelines.predict", "score a cohort with trained BLEG models"),
    "pretrain": ("pipelines.pretrain", "pretrain a foundation model (masked ROI windows) for FIMP"),
    "tune": ("pipelines.tune", "Ray Tune sweep over BLEG's adapter and alignment settings"),
    "run": ("pipelines.main", "the main job: cohort -> augment -> BLEG -> tune -> FIMP -> report"),
    "report": ("pipelines.report", "rewrite the main job's report from its outputs"),
    "submit": ("pipelines.submit:submit_main", "run one of these jobs on a Ray cluster (Jobs API)"),
    "status": ("pipelines.submit:status_main", "the cluster's jobs and their status"),
    "logs": ("pipelines.submit:logs_main", "a submitted job's logs"),
    "stop": ("pipelines.submit:stop_main", "stop a submitted job"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        lines = ["usage: fmgnn COMMAND [ARGS...]", "", "commands:"]
        lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv[:1] in ([], ["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    return getattr(import_module(module), function or "main")(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
