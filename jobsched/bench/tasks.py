"""Tasks the benchmark's workers run (``--import jobsched.bench.tasks``)."""

from __future__ import annotations

from jobsched.tasks import task

NOOP = "jobsched.bench.tasks:noop"


@task
def noop() -> None:
    """Does nothing: what is measured is the scheduler around it."""
