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
