"""Peak memory of ``fmgnn pretrain``'s job process and Ray Train workers as the corpus grows.

    python bench/pretrain_memory.py --subjects 1000 8000 --work /tmp/pretrain-memory
    python bench/pretrain_memory.py --subjects 1000 8000 --code /tmp/old-tree --label before   # another tree

For each size: the synthetic cohort (time series, AAL-90, 200 time points, seed 0; written once into
``--work``) as the whole corpus, then ``fmgnn pretrain`` with 2 Ray Train workers, one epoch of a tiny
foundation model (hidden 16, one layer: the data, not the model, is measured), as its own process. Printed
per size: the corpus's sequences, the job process's peak RSS (``wait4``), the workers' largest peak RSS
(polled, as ``bench/train_shards.py`` polls) and the job's wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_shards import cohort_of, watch_workers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--code", default=None, help="run the job from this source tree instead of this one")
    parser.add_argument("--work", default="/tmp/fmgnn-pretrain-memory")
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    code = Path(args.code).resolve() if args.code else REPO
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    print("| code | scans | sequences | job process peak MB | worker peak MB | job wall s |\n"
          "|---|---:|---:|---:|---:|---:|", flush=True)
    for n in args.subjects:
        cohort = cohort_of(n, work, "series", n_timepoints=200, store="timeseries")
        output = work / f"model-{n}-{args.label.replace(' ', '_')}"
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(f"{output}.run", ignore_errors=True)  # a finished run would be read back, not trained
        command = [sys.executable, "-m", "pipelines.pretrain", f"corpus=[{cohort}]", f"output={output}",
                   "optim.epochs=1", "optim.batch_size=1024", "tracking.enabled=false",
                   "foundation={hidden: 16, heads: 2, layers: 1, intermediate: 32}",
                   "ray.num_workers=2", "ray.cpus_per_worker=1", "ray.num_cpus=4"]
        started = time.monotonic()
        with open(work / f"{output.name}.log", "w") as log:
            job = subprocess.Popen(command, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
            workers = watch_workers(job)
            _, status, usage = os.wait4(job.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"the job failed: {log.name}")
        wall = time.monotonic() - started
        sequences = n * 90  # one stretch of 200 frames (window 20 x 10 windows) per region of each scan
        print(f"| {args.label} | {n} | {sequences} | {usage.ru_maxrss / 1024:.0f} | "
              f"{max(workers.values(), default=float('nan')):.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
