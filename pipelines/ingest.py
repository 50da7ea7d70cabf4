"""``fmgnn ingest ADAPTER [SOURCE] -o OUT.parquet [key=value ...]``: any source to a cohort Parquet file.

    python -m pipelines.ingest corrpops ../shared/data/corrpops/nmda_aal.npz -o cohorts/nmda_aal.parquet
    python -m pipelines.ingest braingb abide.npy -o cohorts/abide.parquet label_names=[control,autism]
    python -m pipelines.ingest bids data/my_study -o cohorts/study.parquet label_column=diagnosis
    python -m pipelines.ingest matrices abide/matrices -o cohorts/abide.parquet participants=pheno.csv \
        id_column=SUB_ID label_column=DX_GROUP site_column=SITE_ID atlas=AAL116
    python -m pipelines.ingest series abide/rois_cc200 -o cohorts/nyu.parquet participants=pheno.csv \
        id_column=FILE_ID label_column=DX_GROUP site_column=SITE_ID atlas=CC200
    python -m pipelines.ingest abide -o cohorts/abide.parquet data_dir=~/nilearn_data n_subjects=100
    python -m pipelines.ingest adhd -o cohorts/adhd.parquet data_dir=~/nilearn_data
    python -m pipelines.ingest synthetic -o cohorts/synthetic.parquet n_subjects=100000 store=fc

Overrides set the adapter's config fields (see each adapter's config class). The cohort is
written atomically: on any error nothing is left at the output path.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmgnn.cohort import CohortError
from fmgnn.config import config_from_dict
from fmgnn.sources.bids import BidsConfig, ingest_bids
from fmgnn.sources.braingb import BrainGBConfig, ingest_braingb
from fmgnn.sources.corrpops import CorrpopsConfig, ingest_corrpops
from fmgnn.sources.matrices import MatricesConfig, ingest_matrices
from fmgnn.sources.nilearn_abide import AbideConfig, ingest_abide
from fmgnn.sources.nilearn_adhd import AdhdConfig, ingest_adhd
from fmgnn.sources.report import IngestReport
from fmgnn.sources.series import SeriesConfig, ingest_series
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from pipelines.errors import exit_on_input_error


@dataclass(frozen=True)
class Adapter:
    config_class: type
    run: Callable[..., IngestReport]
    needs_source: bool


ADAPTERS: dict[str, Adapter] = {
    "corrpops": Adapter(CorrpopsConfig, ingest_corrpops, needs_source=True),
    "braingb": Adapter(BrainGBConfig, ingest_braingb, needs_source=True),
    "bids": Adapter(BidsConfig, ingest_bids, needs_source=True),
    "matrices": Adapter(MatricesConfig, ingest_matrices, needs_source=True),
    "series": Adapter(SeriesConfig, ingest_series, needs_source=True),
    "abide": Adapter(AbideConfig, ingest_abide, needs_source=False),
    "adhd": Adapter(AdhdConfig, ingest_adhd, needs_source=False),
    "synthetic": Adapter(SyntheticConfig, ingest_synthetic, needs_source=False),
}


def ingest(adapter_name: str, source: str | None, output: str | Path,
           overrides: list[str] | None = None) -> IngestReport:
    """Run one adapter; ``overrides`` are ``key=value`` settings of its config."""
    adapter = ADAPTERS[adapter_name]
    config: Any = config_from_dict(adapter.config_class, {}, overrides)
    if adapter.needs_source:
        if not source:
            raise CohortError(f"ingest {adapter_name}: give the source path")
        return adapter.run(source, output, config)
    if source:
        raise CohortError(f"ingest {adapter_name}: takes no source path (received {source!r})")
    return adapter.run(output, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmgnn ingest", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("adapter", choices=sorted(ADAPTERS))
    parser.add_argument("args", nargs="*", help="SOURCE (file or folder, where the adapter reads one), then key=value")
    parser.add_argument("-o", "--output", help="cohort Parquet file to write (default cohorts/<adapter>.parquet)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    source = next((a for a in args.args if "=" not in a), None)
    overrides = [a for a in args.args if "=" in a]
    output = args.output or f"cohorts/{args.adapter}.parquet"
    def run() -> None:
        print("\n".join(ingest(args.adapter, source, output, overrides).lines()))

    return exit_on_input_error("ingest", run)


if __name__ == "__main__":
    raise SystemExit(main())
