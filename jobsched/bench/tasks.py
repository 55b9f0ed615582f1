"""Tasks the benchmark's workers run (``--import jobsched.bench.tasks``)."""

from __future__ import annotations

from jobsched.tasks import task


@task
def noop() -> None:
    """Does nothing: what is measured is the scheduler around it."""
