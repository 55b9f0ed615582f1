"""Tasks the benchmark's workers run (``--import jobsched_dev.bench.tasks``)."""

from __future__ import annotations

import time

from jobsched.tasks import task

NOOP = "jobsched_dev.bench.tasks:noop"
NOOP_ASYNC = "jobsched_dev.bench.tasks:noop_async"
NOOPS = {"sync": NOOP, "async": NOOP_ASYNC}
SLEEP_20MS = "jobsched_dev.bench.tasks:sleep_20ms"


@task
def noop() -> None:
    """Does nothing: what is measured is the scheduler around it. A plain function runs in
    the worker's thread pool."""


@task
async def noop_async() -> None:
    """Does nothing, as a coroutine function: it runs on the worker's loop, no thread."""


@task
def sleep_20ms() -> None:
    """Holds its thread for about 20 ms: a task that takes a little time, so that runs
    overlap and a worker killed under load has some of them in flight (the soak)."""
    time.sleep(0.02)
