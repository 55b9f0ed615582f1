"""Tasks registered with ``isolation="process"`` for tests/unit/test_python_runs.py: the
child process imports this module again, so they live in a module of their own."""

from __future__ import annotations

import asyncio
import os
import time

from jobsched.tasks import TaskContext, task


@task(name="unit:in_process", isolation="process")
def in_process(add: int, context: TaskContext) -> dict[str, int]:
    print("printed, not the answer")
    return {"pid": os.getpid(), "attempt": context.attempt + add}


@task(name="unit:async_in_process", isolation="process")
async def async_in_process() -> int:
    await asyncio.sleep(0)
    return os.getpid()


@task(name="unit:fails_in_process", isolation="process")
def fails_in_process() -> None:
    raise ValueError("no")


@task(name="unit:not_json_in_process", isolation="process")
def not_json_in_process() -> set[int]:
    return {1}


@task(name="unit:sleeps_in_process", isolation="process")
def sleeps_in_process(seconds: float, pidfile: str) -> None:
    with open(pidfile, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)


@task(name="unit:ignores_sigterm", isolation="process")
def ignores_sigterm(pidfile: str) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pidfile, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(60)


@task(name="unit:node_in_process", isolation="process")
def node_in_process(upstream: dict[str, int], input: dict[str, int]) -> dict[str, int]:
    return {"sum": sum(upstream.values()) + input["offset"]}


@task(name="unit:logs_and_fails_in_process", isolation="process")
def logs_and_fails_in_process() -> None:
    import logging

    print("printed in a child")
    logging.getLogger(__name__).info("logged in a child")
    logging.getLogger(__name__).debug("not at the worker's level")
    raise KeyError("missing")
