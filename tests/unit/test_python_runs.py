"""Running a python task: results, failures and timeouts of sync and async functions."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.python import ThreadRunner, run_python


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


@pytest.fixture(params=["executor", "threads"])
def runner(request: pytest.FixtureRequest) -> ThreadRunner | None:
    """The loop's default executor, or the worker's own runner (one per worker)."""
    return ThreadRunner(2) if request.param == "threads" else None


async def _run(name: str, timeout_s: float = 5.0, threads: ThreadRunner | None = None,
               **args: object) -> tuple[str, str | None, str | None]:
    result = await run_python({"function": name, "args": args}, timeout_s, 1000, REGISTRY,
                              CONTEXT, threads)
    return result.outcome, result.output, result.error


async def test_sync_and_async_results(runner: ThreadRunner | None) -> None:
    assert await _run("t:_sleepy", threads=runner, seconds=0) == ("succeeded", '"slept"', None)
    assert await _run("t:_async_sleepy", threads=runner, seconds=0) == (
        "succeeded", '"slept"', None)
    assert await _run("t:_with_context", threads=runner) == ("succeeded", "2", None)


async def test_timeouts_end_the_attempt_without_waiting_for_the_function(
        runner: ThreadRunner | None) -> None:
    started = time.monotonic()
    assert (await _run("t:_sleepy", 0.1, runner, seconds=1.0))[0] == "timed_out"
    assert (await _run("t:_async_sleepy", 0.1, runner, seconds=5.0))[0] == "timed_out"
    assert time.monotonic() - started < 1.0


async def test_failures_and_unknown_functions(runner: ThreadRunner | None) -> None:
    assert await _run("t:_broken", threads=runner) == ("failed", None, "ValueError: no")
    outcome, _, error = await _run("t:missing", threads=runner)
    assert outcome == "failed" and "not registered" in (error or "")


async def test_many_runs_at_once_all_come_back() -> None:
    """More runs than threads, ending together: every one gets its own result."""
    runner = ThreadRunner(3)
    results = await asyncio.gather(*(_run("t:_sleepy", threads=runner, seconds=0.01 * (i % 5))
                                     for i in range(200)))
    assert results == [("succeeded", '"slept"', None)] * 200


async def test_a_timed_out_thread_is_handed_to_linger_until_it_ends() -> None:
    """A plain function on a thread cannot be stopped: the attempt says so at once, and the
    future given to ``linger`` resolves only when the function really returns."""
    lingering: list[asyncio.Future[None]] = []
    started = time.monotonic()
    result = await run_python({"function": "t:_sleepy", "args": {"seconds": 0.5}}, 0.1,
                              1000, REGISTRY, CONTEXT, ThreadRunner(2), linger=lingering.append)
    assert result.outcome == "timed_out" and "could not be interrupted" in (result.error or "")
    assert time.monotonic() - started < 0.4
    (ended,) = lingering
    assert not ended.done()
    await asyncio.wait_for(ended, 2)
    assert time.monotonic() - started >= 0.5


async def test_a_run_that_ends_in_time_lingers_not() -> None:
    lingering: list[asyncio.Future[None]] = []
    result = await run_python({"function": "t:_sleepy", "args": {"seconds": 0}}, 1, 1000,
                              REGISTRY, CONTEXT, ThreadRunner(2), linger=lingering.append)
    assert result.outcome == "succeeded" and lingering == []
