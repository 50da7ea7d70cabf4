"""The one command-line main of the config-driven jobs: ``fmgnn JOB [WHAT] [--config FILE] [key=value ...]``.

Settings come from a YAML file and dotted overrides into the job's typed config; bad input (an
``InputError``) ends the command with one line and status 2, anything else with its traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmgnn.config import load_config
from pipelines.errors import exit_on_input_error

Entry = tuple[type, Callable[[Any], Any]]  # the job's config class and the function that runs it


def job_main(command: str, doc: str, argv: list[str] | None, job: Entry | None = None,
             kinds: dict[str, Callable[[], Entry]] | None = None, default_config: str | None = None) -> int:
    """Parse ``argv``, load the config, run the job. ``kinds``: jobs chosen by a first word (``train bleg``),
    each imported only when chosen; ``default_config``: the YAML file used when ``--config`` is not given."""
    parser = argparse.ArgumentParser(prog=f"fmgnn {command}", description=doc.strip().split("\n")[0])
    if kinds:
        parser.add_argument("what", choices=list(kinds), help=f"what to {command}")
    parser.add_argument("--config", help="YAML config file" + (f" (default: {default_config})" if default_config
                                                                else ""))
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ray.num_workers=2")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config_class, run = kinds[args.what]() if kinds else job
    path = args.config or (default_config if default_config and Path(default_config).is_file() else None)
    return exit_on_input_error(command, lambda: run(load_config(config_class, path, args.overrides)))
