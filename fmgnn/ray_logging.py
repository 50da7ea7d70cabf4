"""Quieter Ray Train workers.

Ray Train 2.60 logs every ``ray.train.report`` call (with all its metrics) at INFO through a
logger named by its source file path, so ``RunConfig(logging_config=LoggingConfig(...))``,
which filters the ``ray.train`` logger, does not reach it. Called at the top of a training
function, this sets that one logger to WARNING in the worker process.
"""

from __future__ import annotations

import logging


def quiet_report_logs(level: int = logging.WARNING) -> None:
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(level)
