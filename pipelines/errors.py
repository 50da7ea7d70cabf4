"""Bad input ends a command with one line naming the file, subject or field, and exit status 2.

Only ``fmgnn.errors.InputError`` (and its kinds: ``CohortError``, ``ConfigError``, ``SplitError``) is bad
input; any other exception, a ``ValueError`` of a bug included, propagates with its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from fmgnn.errors import InputError


def exit_on_input_error(command: str, run: Callable[[], object]) -> int:
    """Run ``run``; an input error becomes ``fmgnn COMMAND: error: ...`` on stderr and status 2."""
    try:
        run()
    except InputError as err:
        print(f"fmgnn {command}: error: {err}", file=sys.stderr)
        return 2
    return 0
