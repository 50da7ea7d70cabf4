"""Bad input ends a command with one line naming the file, subject or field, and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from fmgnn.cohort import CohortError
from fmgnn.config import ConfigError
from fmgnn.evaluation.splits import SplitError

INPUT_ERRORS = (CohortError, ConfigError, SplitError, ValueError)


def exit_on_input_error(command: str, run: Callable[[], object]) -> int:
    """Run ``run``; an input error becomes ``fmgnn COMMAND: error: ...`` on stderr and status 2."""
    try:
        run()
    except INPUT_ERRORS as err:
        print(f"fmgnn {command}: error: {err}", file=sys.stderr)
        return 2
    return 0
