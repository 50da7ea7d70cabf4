"""Streaming ingest of a large synthetic cohort: subjects/s, peak memory, file size.

    python bench/synthetic_stream.py --subjects 100000 --out /tmp/synthetic_100k.parquet
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmgnn.cohort import Cohort  # noqa: E402
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--timepoints", type=int, default=120)
    parser.add_argument("--store", default="fc", choices=["fc", "timeseries", "both"])
    parser.add_argument("--out", default="/tmp/fmgnn_bench_synthetic.parquet")
    parser.add_argument("--keep", action="store_true", help="keep the output file")
    args = parser.parse_args()
    config = SyntheticConfig(n_subjects=args.subjects, n_timepoints=args.timepoints, store=args.store)
    start = time.perf_counter()
    ingest_synthetic(args.out, config, progress_every_s=30)
    seconds = time.perf_counter() - start
    rows = len(Cohort(args.out))
    size = Path(args.out).stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'subjects':>10} {'T':>5} {'store':>10} {'seconds':>9} {'subjects/s':>11} "
          f"{'file MB':>9} {'peak RSS MB':>12}")
    print(f"{rows:>10} {args.timepoints:>5} {args.store:>10} {seconds:>9.1f} {rows / seconds:>11.0f} "
          f"{size / 1e6:>9.0f} {peak:>12.0f}")
    if not args.keep:
        Path(args.out).unlink()


if __name__ == "__main__":
    main()
