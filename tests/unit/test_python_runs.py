"""Running a python task: results, failures and timeouts of sync and async functions."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.executors import run_python


def _sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


async def _async_sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def _broken() -> None:
    raise ValueError("no")


def _with_context(context: TaskContext) -> int:
    return context.attempt


REGISTRY = TaskRegistry()
for function in (_sleepy, _async_sleepy, _broken, _with_context):
    REGISTRY.register(function, f"t:{function.__name__}")
CONTEXT = TaskContext(uuid.uuid4(), 2, uuid.uuid4(), datetime.now(UTC))


async def _run(name: str, timeout_s: float = 5.0, **args: object) -> tuple[str, str | None,
                                                                          str | None]:
    result = await run_python({"function": name, "args": args}, timeout_s, 1000, REGISTRY,
                              CONTEXT)
    return result.outcome, result.output, result.error


async def test_sync_and_async_results() -> None:
    assert await _run("t:_sleepy", seconds=0) == ("succeeded", '"slept"', None)
    assert await _run("t:_async_sleepy", seconds=0) == ("succeeded", '"slept"', None)
    assert await _run("t:_with_context") == ("succeeded", "2", None)


async def test_timeouts_end_the_attempt_without_waiting_for_the_function() -> None:
    started = time.monotonic()
    assert (await _run("t:_sleepy", 0.1, seconds=1.0))[0] == "timed_out"
    assert (await _run("t:_async_sleepy", 0.1, seconds=5.0))[0] == "timed_out"
    assert time.monotonic() - started < 1.0


async def test_failures_and_unknown_functions() -> None:
    assert await _run("t:_broken") == ("failed", None, "ValueError: no")
    outcome, _, error = await _run("t:missing")
    assert outcome == "failed" and "not registered" in (error or "")
