"""The one class of bad input. Commands turn it into one line naming the file, row, field or setting,
and exit status 2; every other exception is a bug and keeps its traceback."""

from __future__ import annotations


class InputError(ValueError):
    """A bad file, row, field or setting; the message names it and says what was expected."""
