"""Tasks the e2e worker imports with ``--import sample_tasks``."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from jobsched import TaskContext, task


@task
def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


@task
async def greet(name: str, context: TaskContext) -> str:
    await asyncio.sleep(0)
    return f"hello {name} from attempt {context.attempt} of {context.execution_id}"


@task
def noop() -> None:
    return None


@task
def always_fails() -> None:
    raise RuntimeError("this task always fails")


@task(name="sample_tasks:report")
def report(team: str, count: int = 1) -> dict[str, object]:
    """Named explicitly, so the key is the same whether this module is imported as
    ``sample_tasks`` (the worker) or ``tests.e2e.sample_tasks`` (a test scheduling it)."""
    return {"team": team, "count": count}


@task
async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


@task(name="sample_tasks:progress")
def progress(steps: int, pause_s: float = 0.5, fail: bool = False) -> dict[str, int]:
    """Prints and logs a line per step (tests/e2e/test_run_logs.py: the run's output
    streams while it goes on); with ``fail`` it raises after the last one."""
    for step in range(1, steps + 1):
        print(f"step {step} of {steps}")
        logging.getLogger("sample_tasks.progress").info("logged step %d", step)
        time.sleep(pause_s)
    if fail:
        raise ValueError(f"gave up after {steps} steps")
    return {"steps": steps}


@task(name="sample_tasks:progress_in_process", isolation="process")
def progress_in_process(steps: int, pause_s: float = 0.5) -> dict[str, int]:
    """``progress`` in a child process of the worker: its stdout and stderr stream."""
    return progress(steps, pause_s)


# Workflow nodes (tests/e2e/test_workflows.py): they ask for ``upstream`` and ``input``.


@task(name="sample_tasks:numbers")
def numbers(count: int, input: dict[str, object]) -> list[int]:
    return list(range(count + int(input.get("extra", 0))))  # type: ignore[call-overload]


@task(name="sample_tasks:scale")
def scale(factor: int, upstream: dict[str, list[int]]) -> int:
    return sum(upstream["numbers"]) * factor


@task(name="sample_tasks:total")
def total(upstream: dict[str, int | None], input: dict[str, int]) -> dict[str, object]:
    values = {k: v for k, v in upstream.items() if v is not None}
    return {"total": sum(values.values()) + input.get("offset", 0), "from": sorted(values)}


@task(name="sample_tasks:fails_first_attempt")
def fails_first_attempt(context: TaskContext, upstream: dict[str, object]) -> dict[str, object]:
    if context.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"attempt": context.attempt, "upstream": upstream}


@task(name="sample_tasks:upstream_keys")
def upstream_keys(upstream: dict[str, object]) -> list[str]:
    return sorted(k for k, v in upstream.items() if v is not None)


# Cancel and timeout of plain functions (tests/e2e/test_stop_plain_functions.py).


@task(name="sample_tasks:doze")
def doze(seconds: float) -> str:
    """A plain function on the worker's thread runner: it cannot be interrupted."""
    time.sleep(seconds)
    return "woke up"


@task(name="sample_tasks:doze_in_process", isolation="process")
def doze_in_process(seconds: float, pidfile: str) -> str:
    """The same in a child process of the worker, which a cancel or timeout kills."""
    with open(pidfile, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)
    return "woke up"


@task(name="sample_tasks:whoami_in_process", isolation="process")
def whoami_in_process(context: TaskContext) -> dict[str, int]:
    return {"pid": os.getpid(), "parent": os.getppid(), "attempt": context.attempt}
