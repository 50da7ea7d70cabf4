"""Peak memory of the GCN baseline's workers and driver as the cohort grows, and its throughput.

    python bench/train_shards.py --subjects 4000 40000 --memory-mb 64 --work /tmp/shards
    python bench/train_shards.py --subjects 4000 --memory-mb 100000 --work /tmp/shards      # every part held
    python bench/train_shards.py --subjects 4000 40000 --code /tmp/old-tree --work /tmp/shards  # another tree

For each size: the synthetic cohort (``store=fc``, AAL-90, written once into ``--work``), then
``fmgnn train baseline models=[gcn]`` with 2 Ray Train workers, 2 folds, ``--epochs`` epochs, as its own
process. Printed per size: the driver's peak RSS (the job's process, from ``wait4``), the workers' peak
RSS (polled; in brackets the engine's own record, ``peak_rss_mb``, where the tree writes it), the
training graphs per worker, and graphs per second (training graphs of the fold over the seconds of an
epoch: training, BatchNorm refresh and validation; the first epoch, and with ``--epochs`` above 1 the
mean of the later ones, where a streamed part reads the graphs it spilled instead of building them).
``--code`` runs the job from another source tree (an older commit's worktree), put first on
``PYTHONPATH`` for the driver and, through the embedded Ray it starts, for the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402


def cohort_of(n: int, work: Path, name: str = "synthetic", n_timepoints: int = 120, store: str = "fc") -> Path:
    """The synthetic cohort of ``n`` scans (AAL-90, seed 0) in ``work``, ingested on first use."""
    path = work / f"{name}-{n}.parquet"
    if not path.is_file():
        started = time.monotonic()
        ingest_synthetic(path, SyntheticConfig(n_subjects=n, n_timepoints=n_timepoints, store=store, seed=0,
                                               name=f"{name}-{n}"))
        print(f"ingest {n} scans: {time.monotonic() - started:.0f} s", flush=True)
    return path


def run_job(cohort: Path, run_dir: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """The baseline job as its own process: wall seconds, its peak RSS and its workers' largest (MB)."""
    command = [sys.executable, "-m", "pipelines.train", "baseline", f"cohort={cohort}", f"run_dir={run_dir}",
               "models=[gcn]", "folds.n_folds=2", "folds.seeds=[0]", f"gcn.epochs={args.epochs}",
               "ray.num_workers=2", "ray.cpus_per_worker=1", "ray.max_concurrent_runs=1", "ray.num_cpus=4"]
    if args.memory_mb is not None:
        command.append(f"graph.memory_mb={args.memory_mb}")
    env = dict(os.environ)
    code = Path(args.code).resolve() if args.code else REPO
    env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")])
    started = time.monotonic()
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    job = subprocess.Popen(command, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
    workers = watch_workers(job)
    _, status, usage = os.wait4(job.pid, 0)
    job.returncode = os.waitstatus_to_exitcode(status)
    if job.returncode != 0:
        sys.exit(f"the job failed: {log.name}")
    return time.monotonic() - started, usage.ru_maxrss / 1024, max(workers.values(), default=float("nan"))


def watch_workers(job: subprocess.Popen) -> dict[int, float]:
    """Peak RSS (MB) of every Ray Train worker process while ``job`` runs, polled every 0.2 s in a thread
    (the same measure for any tree; the engine's own ``peak_rss_mb`` is printed beside it where recorded)."""
    import threading

    import psutil

    peaks: dict[int, float] = {}

    def poll() -> None:
        while job.poll() is None:
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = proc.info["cmdline"] or []
                if cmdline and cmdline[0].startswith("ray::RayTrainWorker") and proc.info["memory_info"]:
                    peaks[proc.pid] = max(peaks.get(proc.pid, 0.0), proc.info["memory_info"].rss / 2**20)
            time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[4000, 40000])
    parser.add_argument("--memory-mb", type=float, default=None, help="graph.memory_mb (default: the config's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--code", default=None, help="run the job from this source tree instead of this one")
    parser.add_argument("--work", default="/tmp/fmgnn-shards")
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| code | scans | graph.memory_mb | driver peak MB | worker peak MB | train graphs/worker | graphs/s | "
          "graphs/s, later epochs | job wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for n in args.subjects:
        cohort = cohort_of(n, work)
        run_dir = work / f"run-{n}-{args.label.replace(' ', '_')}-{args.memory_mb}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a finished run would be read back, not trained
        wall, driver_mb, worker_mb = run_job(cohort, run_dir, args)
        folds = [json.loads(p.read_text()) for p in sorted((run_dir / "gcn").glob("seed*.json"))]
        recorded = [f["peak_rss_mb"] for f in folds if f.get("peak_rss_mb")]
        n_train = folds[0]["n_train"]
        rate = n_train / max(f["history"][0]["seconds"] for f in folds)
        later = "-"
        if args.epochs > 1:  # seconds are cumulative: the later epochs' mean, the slower fold
            spans = [(f["history"][-1]["seconds"] - f["history"][0]["seconds"]) / (len(f["history"]) - 1)
                     for f in folds]
            later = f"{n_train / max(spans):.0f}"
        worker = f"{worker_mb:.0f}" + (f" ({max(recorded):.0f})" if recorded else "")
        print(f"| {args.label} | {n} | {args.memory_mb or 'default'} | {driver_mb:.0f} | {worker} | {n_train // 2} | "
              f"{rate:.0f} | {later} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
