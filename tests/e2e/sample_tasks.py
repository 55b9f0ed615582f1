"""Tasks the e2e worker imports with ``--import sample_tasks``."""

from __future__ import annotations

import asyncio

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
