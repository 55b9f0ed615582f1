"""A python run's prints, log records and traceback go to its own output
(jobsched.worker.capture), never to another run's or to the worker's stdout or log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import tests.unit.process_tasks  # noqa: F401 - registers the isolation="process" tasks
from jobsched import tasks
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker import capture
from jobsched.worker.capture import OutputBuffer
from jobsched.worker.python import ThreadRunner, run_python


def _chatty(tag: str, lines: int) -> str:
    for i in range(lines):
        print(f"{tag} print {i}")
        time.sleep(0.002)
    logging.getLogger("tasks.chatty").info("%s logged", tag)
    sys.stderr.write(f"{tag} stderr\n")
    return tag


def _writes_bytes() -> None:
    sys.stdout.buffer.write(b"raw bytes\n")


async def _async_chatty(tag: str, lines: int) -> str:
    for i in range(lines):
        print(f"{tag} print {i}")
        await asyncio.sleep(0.002)
    logging.getLogger("tasks.chatty").info("%s logged", tag)
    sys.stderr.write(f"{tag} stderr\n")
    return tag


def _logs_and_fails() -> None:
    logging.getLogger("tasks.failing").warning("about to fail")
    raise RuntimeError("it broke")


def _waits(started: threading.Event, go_on: threading.Event) -> None:
    print("first line", flush=True)
    started.set()
    go_on.wait(5)
    print("second line")


REGISTRY = TaskRegistry()
for function in (_chatty, _async_chatty, _logs_and_fails, _waits, _writes_bytes):
    REGISTRY.register(function, f"out:{function.__name__}")
CONTEXT = TaskContext(uuid.uuid4(), 1, uuid.uuid4(), datetime.now(UTC))


@contextlib.contextmanager
def worker_streams() -> Iterator[tuple[io.StringIO, io.StringIO, io.StringIO]]:
    """The worker's stdout, stderr and log stream, with runs' output routed away from
    them as ``Worker.run`` routes it. (Set in the test itself: pytest's capture puts its
    own sys.stdout back between a fixture's set-up and the test.)"""
    stdout, stderr, log = io.StringIO(), io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    capture.install()
    try:
        yield stdout, stderr, log
    finally:
        capture.uninstall()
        sys.stdout, sys.stderr = saved
        root.removeHandler(handler)
        root.setLevel(level)


async def _run(name: str, threads: ThreadRunner | None = None, limit: int = 10_000,
               **args: object) -> tuple[str, str | None, str | None]:
    result = await run_python({"function": name, "args": args}, 5.0, limit, REGISTRY, CONTEXT,
                              threads)
    return result.outcome, result.output, result.error


async def test_concurrent_runs_keep_their_own_prints_and_logs() -> None:
    """Two plain functions on threads and two async functions, all printing at once, while
    the worker logs and prints of its own: each output holds its run's lines only, in
    order, then its return value; the worker's streams hold none of them."""
    with worker_streams() as (stdout, stderr, log):
        threads = ThreadRunner(4)
        worker_log = logging.getLogger("jobsched.worker.test")
        runs = asyncio.gather(*(
            _run("out:_chatty" if i < 2 else "out:_async_chatty", threads, tag=f"run{i}",
                 lines=30) for i in range(4)))
        while not runs.done():
            worker_log.info("worker beat")
            print("worker print")
            await asyncio.sleep(0.005)
        for i, (outcome, output, error) in enumerate(await runs):
            assert (outcome, error) == ("succeeded", None)
            lines = (output or "").splitlines()
            assert lines[:30] == [f"run{i} print {n}" for n in range(30)], output
            assert lines[30].endswith(f" INFO tasks.chatty: run{i} logged"), lines[30]
            assert lines[31:] == [f"run{i} stderr", f'"run{i}"']
        assert "run" not in stdout.getvalue() + stderr.getvalue() + log.getvalue()
        assert "worker print" in stdout.getvalue() and "worker beat" in log.getvalue()


async def test_a_failing_run_has_its_log_lines_and_traceback_in_its_output() -> None:
    with worker_streams() as (_, _, log):
        outcome, output, error = await _run("out:_logs_and_fails", ThreadRunner(1))
        assert (outcome, error) == ("failed", "RuntimeError: it broke")
        first, *traceback = (output or "").splitlines()
        assert first.endswith(" WARNING tasks.failing: about to fail")
        assert traceback[0] == "Traceback (most recent call last):"
        assert traceback[-1] == "RuntimeError: it broke"
        assert "about to fail" not in log.getvalue()


async def test_output_is_readable_while_the_run_goes_on() -> None:
    with worker_streams():
        started, go_on = threading.Event(), threading.Event()
        buffer = OutputBuffer(1000)
        run = asyncio.ensure_future(run_python(
            {"function": "out:_waits", "args": {"started": started, "go_on": go_on}}, 5.0, 1000,
            REGISTRY, CONTEXT, ThreadRunner(1), output=buffer))
        assert await asyncio.to_thread(started.wait, 5)
        assert buffer.render_partial(1000, []) == "first line\n"
        go_on.set()
        result = await run
        assert result.output == "first line\nsecond line\n"


async def test_output_past_the_limit_keeps_its_head() -> None:
    with worker_streams():
        _, output, _ = await _run("out:_chatty", ThreadRunner(1), limit=40, tag="t", lines=100)
        assert output is not None and output.startswith("t print 0\nt print 1\nt print 2\n")
        assert output.endswith(" more bytes]") and "[output truncated:" in output


async def test_a_process_run_streams_its_prints_logs_and_traceback() -> None:
    buffer = OutputBuffer(10_000)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # the child logs at the worker's level
    try:
        result = await run_python({"function": "unit:logs_and_fails_in_process"}, 10, 10_000,
                                  tasks.registry, CONTEXT, ThreadRunner(1), output=buffer)
    finally:
        root.setLevel(level)
    assert (result.outcome, result.error) == ("failed", "KeyError: 'missing'")
    lines = (result.output or "").splitlines()
    assert lines[0] == "printed in a child"
    assert lines[1].endswith(" INFO tests.unit.process_tasks: logged in a child"), lines
    assert "DEBUG" not in result.output  # below the worker's level
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "KeyError: 'missing'"


def test_the_buffer_keeps_the_head_and_counts_the_rest() -> None:
    buffer = OutputBuffer(10)
    buffer.write(b"0123456")
    assert buffer.changes == 1
    buffer.write(b"789abc")
    assert buffer.snapshot() == (b"0123456789", 13) and buffer.changes == 2
    buffer.write(b"more")  # past what is kept: nothing new to flush
    assert buffer.changes == 2
    assert buffer.render(8, []) == "01234567\n[output truncated: 9 more bytes]"
    assert OutputBuffer(10).render(8, []) is None


def test_partial_output_never_shows_the_start_of_a_secret() -> None:
    """While a run goes on, a secret written in pieces shows no piece: the tail that could
    begin a secret is held back until the rest (or something else) follows."""
    buffer = OutputBuffer(1000)
    buffer.write(b"token: hunter")
    assert buffer.render_partial(1000, ["hunter2secret"]) == "token: "
    buffer.write(b"2sec")
    assert buffer.render_partial(1000, ["hunter2secret"]) == "token: "
    buffer.write(b"ret and on")
    assert buffer.render_partial(1000, ["hunter2secret"]) == "token: *** and on"
    assert buffer.render_partial(1000, ["onwards"]) == "token: hunter2secret and "


def test_partial_output_holds_back_an_incomplete_character() -> None:
    buffer = OutputBuffer(1000)
    buffer.write("naïve".encode()[:3])
    assert buffer.render_partial(1000, []) == "na"
    buffer.write("naïve".encode()[3:])
    assert buffer.render_partial(1000, []) == "naïve"


async def test_writes_to_the_binary_stream_are_routed_too() -> None:
    saved = sys.stdout
    raw = io.BytesIO()
    worker_stdout = sys.stdout = io.TextIOWrapper(raw)
    capture.install()
    try:
        _, output, _ = await _run("out:_writes_bytes", ThreadRunner(1))
        sys.stdout.buffer.write(b"the worker's\n")
        written = raw.getvalue()
    finally:
        capture.uninstall()
        sys.stdout = saved
        worker_stdout.detach()
    assert output == "raw bytes\n" and written == b"the worker's\n"


def test_outside_a_run_the_proxies_change_nothing() -> None:
    with worker_streams() as (stdout, stderr, log):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("jobsched.anything").warning("a worker warning")
        assert stdout.getvalue() == "to stdout\n" and stderr.getvalue() == "to stderr\n"
        assert "a worker warning" in log.getvalue()
        assert sys.stdout.encoding == stdout.encoding  # everything else is the stream's own
