"""Tasks the chaos cluster's workers import (``--import chaos_tasks``). Each run appends a
``start`` line and an ``end`` (or ``stopped``) line to $CHAOS_RUNLOG, so the tests count
what really ran, not only what the database recorded."""

from __future__ import annotations

import asyncio
import os
import time

import orjson

from jobsched import TaskContext, task

RUNLOG = os.environ.get("CHAOS_RUNLOG")
WORKER = os.environ.get("JOBSCHED_INSTANCE", str(os.getpid()))


def _log(event: str, context: TaskContext) -> None:
    if not RUNLOG:
        return
    line = orjson.dumps({
        "event": event, "t": time.time(), "worker": WORKER, "pid": os.getpid(),
        "execution_id": str(context.execution_id), "attempt": context.attempt,
        "job_id": str(context.job_id), "scheduled_for": context.scheduled_for.isoformat(),
    }) + b"\n"
    # One O_APPEND write per line: lines from several workers never interleave.
    fd = os.open(RUNLOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task
async def tick(context: TaskContext) -> None:
    _log("start", context)
    _log("end", context)


@task
async def sleep(seconds: float, context: TaskContext) -> dict[str, object]:
    _log("start", context)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _log("stopped", context)
        raise
    _log("end", context)
    return {"slept": seconds, "worker": WORKER}
