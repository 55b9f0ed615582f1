"""Running a python task: results, failures and timeouts of sync and async functions."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import tests.unit.process_tasks  # noqa: F401 - registers the isolation="process" tasks
from jobsched import tasks
from jobsched.ports import NodeInputs
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.python import ThreadRunner, run_python
from jobsched.worker.results import AttemptResult


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
    """The error is the exception's type and message; its traceback is in the output,
    from the task's own frame (none of the worker's)."""
    outcome, output, error = await _run("t:_broken", threads=runner)
    assert (outcome, error) == ("failed", "ValueError: no")
    assert output == (f'Traceback (most recent call last):\n  File "{__file__}", line '
                      f'{_broken.__code__.co_firstlineno + 1}, in _broken\n'
                      '    raise ValueError("no")\nValueError: no\n')
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


async def test_a_run_on_a_thread_says_when_its_thread_called_it() -> None:
    """One thread, two runs: the second waits for the first, and its ``began`` is when its
    thread called it, not when it was queued; a coroutine function's run says nothing (it
    starts when the worker begins it)."""
    runner = ThreadRunner(1)
    queued = time.time()
    first, second = await asyncio.gather(
        run_python({"function": "t:_sleepy", "args": {"seconds": 0.3}}, 5, 1000, REGISTRY,
                   CONTEXT, runner),
        run_python({"function": "t:_sleepy", "args": {"seconds": 0}}, 5, 1000, REGISTRY,
                   CONTEXT, runner))
    assert first.began is not None and second.began is not None
    assert queued <= first.began < queued + 0.2
    assert second.began >= first.began + 0.3
    on_loop = await run_python({"function": "t:_async_sleepy", "args": {"seconds": 0}}, 5,
                               1000, REGISTRY, CONTEXT, runner)
    assert on_loop.outcome == "succeeded" and on_loop.began is None


def _recording(calls: list[str]) -> TaskRegistry:
    """``t:_sleepy``, and ``t:records``, which notes each call in ``calls``."""
    registry = TaskRegistry()
    registry.register(_sleepy, "t:_sleepy")
    registry.register(lambda: calls.append("called"), "t:records")
    return registry


async def test_a_run_timed_out_waiting_for_a_thread_was_never_called() -> None:
    calls: list[str] = []
    registry = _recording(calls)
    runner = ThreadRunner(1)
    busy = asyncio.ensure_future(run_python({"function": "t:_sleepy", "args": {"seconds": 0.4}},
                                            5, 1000, registry, CONTEXT, runner))
    await asyncio.sleep(0.05)  # the thread has taken it
    waited = await run_python({"function": "t:records"}, 0.1, 1000, registry, CONTEXT, runner)
    assert waited.outcome == "timed_out" and waited.began is None
    assert waited.error == ("timed out after 0.1s waiting for one of the worker's 1 task "
                            "threads: the function was not called")
    assert (await busy).outcome == "succeeded"
    await asyncio.sleep(0.1)
    assert calls == []  # the thread that came free skipped it


async def test_threads_start_as_the_queued_runs_need_them() -> None:
    runner = ThreadRunner(4)
    await _run("t:_sleepy", threads=runner, seconds=0)
    await _run("t:_sleepy", threads=runner, seconds=0)
    assert runner._started == 1  # the second run went to the idle thread
    await asyncio.gather(*(_run("t:_sleepy", threads=runner, seconds=0.05) for _ in range(2)))
    assert runner._started == 2  # two runs at once: two threads, not four
    await asyncio.gather(*(_run("t:_sleepy", threads=runner, seconds=0.05) for _ in range(9)))
    assert runner._started == 4


async def test_runs_given_a_due_time_start_then_and_their_timeout_counts_from_then() -> None:
    """Runs claimed ahead of their time: plain functions are queued for the threads by
    their alarm, coroutine functions awaited from then; none starts before it is due, and
    the timeout starts with the run (0.3 s ahead, a 0.3 s timeout, 0.1 s of work)."""
    runner = ThreadRunner(20)  # a thread each: none waits for another
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    results = await asyncio.gather(*(
        run_python({"function": name, "args": {"seconds": 0.1}}, 0.3, 1000, REGISTRY,
                   CONTEXT, runner, due=due)
        for name in ["t:_sleepy"] * 20 + ["t:_async_sleepy"]))
    assert [r.outcome for r in results] == ["succeeded"] * 21, results
    began = [r.began for r in results[:20]]
    assert all(b is not None and b >= due.timestamp() for b in began), began
    assert time.time() >= due.timestamp() + 0.1
    assert results[20].began is None  # on the loop: it starts when the worker begins it


async def test_a_run_cancelled_before_it_is_due_is_never_called() -> None:
    """Cancelled before it was due: no thread will call it, so nothing lingers (its slot
    is free at once), and it is not called when its time comes."""
    calls: list[str] = []
    registry = TaskRegistry()
    registry.register(lambda: calls.append("called"), "t:records")
    lingering: list[asyncio.Future[None]] = []
    due = datetime.now(UTC) + timedelta(seconds=0.2)
    run = asyncio.ensure_future(run_python({"function": "t:records"}, 5, 1000, registry,
                                           CONTEXT, ThreadRunner(1), due=due,
                                           linger=lingering.append))
    await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert lingering == []
    await asyncio.sleep(max(0.0, due.timestamp() - time.time()) + 0.1)
    assert calls == []


async def test_a_run_cancelled_while_it_waits_for_a_thread_lingers_not() -> None:
    calls: list[str] = []
    registry = _recording(calls)
    runner = ThreadRunner(1)
    lingering: list[asyncio.Future[None]] = []
    busy = asyncio.ensure_future(run_python({"function": "t:_sleepy", "args": {"seconds": 0.3}},
                                            5, 1000, registry, CONTEXT, runner,
                                            linger=lingering.append))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(run_python({"function": "t:records"}, 5, 1000, registry,
                                               CONTEXT, runner, linger=lingering.append))
    await asyncio.sleep(0.05)
    waiting.cancel()
    busy.cancel()
    for run in (waiting, busy):
        with pytest.raises(asyncio.CancelledError):
            await run
    (ended,) = lingering  # only the one its thread had called: it runs on
    assert not ended.done()
    await asyncio.wait_for(ended, 2)
    await asyncio.sleep(0.05)
    assert calls == []


async def test_the_loop_is_told_when_a_thread_called_the_function_before_it_returns() -> None:
    told: list[float] = []
    result = asyncio.ensure_future(run_python(
        {"function": "t:_sleepy", "args": {"seconds": 0.3}}, 5, 1000, REGISTRY, CONTEXT,
        ThreadRunner(1), began=told.append))
    await asyncio.sleep(0.15)
    assert len(told) == 1 and not result.done()  # told while the function still runs
    assert (await result).began == told[0]


async def test_a_run_that_ends_in_time_lingers_not() -> None:
    lingering: list[asyncio.Future[None]] = []
    result = await run_python({"function": "t:_sleepy", "args": {"seconds": 0}}, 1, 1000,
                              REGISTRY, CONTEXT, ThreadRunner(2), linger=lingering.append)
    assert result.outcome == "succeeded" and lingering == []


# isolation="process": a child process per run, killed on a timeout or a cancel.


async def _in_process(name: str, timeout_s: float = 10.0, **args: object) -> AttemptResult:
    return await run_python({"function": name, "args": args}, timeout_s, 1000,
                            tasks.registry, CONTEXT, ThreadRunner(2))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


async def test_a_process_task_returns_its_value_from_another_process() -> None:
    result = await _in_process("unit:in_process", add=1)
    assert result.outcome == "succeeded", result
    printed, answer = (result.output or "").split("\n")
    assert printed == "printed, not the answer"
    value = orjson.loads(answer)
    assert value["attempt"] == 3 and value["pid"] != os.getpid()
    result = await _in_process("unit:async_in_process")
    assert result.outcome == "succeeded" and int(result.output or 0) != os.getpid()


async def test_a_process_task_fails_or_renders_as_a_thread_one_does() -> None:
    failed = await _in_process("unit:fails_in_process")
    assert failed.error == "ValueError: no"
    assert (failed.output or "").startswith("Traceback (most recent call last):\n  File ")
    assert (failed.output or "").endswith('    raise ValueError("no")\nValueError: no\n')
    assert "jobsched" not in (failed.output or ""), failed.output  # the task's frames only
    result = await _in_process("unit:not_json_in_process")
    assert result.outcome == "succeeded" and result.output == '"{1}"'


async def test_a_process_task_that_times_out_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    result = await _in_process("unit:sleeps_in_process", 2.0, seconds=30, pidfile=str(pidfile))
    assert result.outcome == "timed_out", result
    assert "process killed" in (result.error or "") and "SIGTERM" in (result.error or "")
    assert time.monotonic() - started < 5
    assert not _alive(int(pidfile.read_text()))


async def test_a_process_task_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    result = await _in_process("unit:ignores_sigterm", 2.0, pidfile=str(pidfile))
    assert result.outcome == "timed_out" and "SIGKILL" in (result.error or ""), result
    assert not _alive(int(pidfile.read_text()))


async def test_a_cancelled_process_task_is_killed_and_says_so(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    notes: list[str] = []
    run = asyncio.ensure_future(run_python(
        {"function": "unit:sleeps_in_process", "args": {"seconds": 30, "pidfile": str(pidfile)}},
        30, 1000, tasks.registry, CONTEXT, ThreadRunner(2), killed=notes.append))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    assert _alive(pid)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not _alive(pid)
    assert len(notes) == 1 and notes[0].startswith("process killed"), notes


def test_isolation_is_checked() -> None:
    with pytest.raises(ValueError, match="isolation must be one of thread, process"):
        tasks.task(name="unit:bad", isolation="fork")  # type: ignore[arg-type]


async def test_a_process_task_as_a_workflow_node_gets_its_inputs_as_json() -> None:
    node = NodeInputs({"offset": 1}, {"a": 2, "b": 3}, None)
    result = await run_python({"function": "unit:node_in_process"}, 10, 1000, tasks.registry,
                              CONTEXT, ThreadRunner(2), node=node)
    assert result.outcome == "succeeded" and orjson.loads(result.result or "") == {"sum": 6}
    not_json = await run_python({"function": "unit:not_json_in_process"}, 10, 1000,
                                tasks.registry, CONTEXT, ThreadRunner(2), node=node)
    assert not_json.outcome == "failed" and "not JSON" in (not_json.error or "")
