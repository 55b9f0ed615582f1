"""Python runs: a function registered with ``@task`` on the worker, sync (on the worker's
thread runner) or async (on its loop)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from jobsched.domain.priority import Priority, WeightedRoundRobin
from jobsched.domain.states import AttemptOutcome
from jobsched.ports import NodeInputs
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.capture import (
    OutputBuffer,
    await_with_traceback,
    call_with_traceback,
    read_into,
    routed_to,
)
from jobsched.worker.deadlines import Alarms, Deadlines
from jobsched.worker.results import AttemptResult
from jobsched.worker.secrets import longest, mask, mask_bounded

#: The timeouts of in-process runs (a timer per 50 ms of deadlines, not per run).
_DEADLINES = Deadlines()
#: When runs given a ``due`` time start, unless the caller has alarms of its own.
_ALARMS = Alarms()

#: Said of a plain function on a thread that was timed out or cancelled.
THREAD_NOT_INTERRUPTED = (
    "the function's thread could not be interrupted: it runs on until it returns, and its "
    "eventual return value is discarded (@task(isolation=\"process\") runs a function in a "
    "child process that is killed instead)")


class ThreadRun:
    """A plain function's run on a ``ThreadRunner``: ``future`` is its outcome, ``ended``
    (if given) resolves when the function really returns; ``began`` is the wall-clock time
    (``time.time()``) its thread called it, None while it waits for a thread. Set by the
    thread, read by the loop, which is also told it by ``on_begin`` (soon after, on the
    loop, with the results of the runs that ended meanwhile)."""

    __slots__ = ("began", "ended", "function", "future", "on_begin")

    def __init__(self, function: Callable[[], Any], future: asyncio.Future[Any],
                 ended: asyncio.Future[None] | None,
                 on_begin: Callable[[float], None] | None = None) -> None:
        self.function = function
        self.future = future
        self.ended = ended
        self.on_begin = on_begin
        self.began: float | None = None


class ThreadRunner:
    """Threads that run plain-function tasks, cheaper for the event loop than
    ``run_in_executor``: a start is an append to a queue, the threads are woken once per
    loop turn for all the runs queued in it, and results come back in batches (one loop
    wake-up for all the runs that ended meanwhile). Runs claimed ahead of their time are
    queued by their alarm (``submit``'s ``due``) when it rings, all of an instant in one
    loop turn: before, each run's task was woken at the instant and queued its run, 15-20
    µs of the loop each, so the last of 1,000 due together started 15-50 ms late (``jobsched
    bench lateness``); threads woken in the middle of such a burst took the interpreter's
    lock from the loop.

    A run's ``began`` is when its thread really called it: a run may wait for a thread
    (more runs than threads), and its recorded start is not earlier than its start.

    Waiting runs are served by priority band, by the same weighted round robin as the run
    slots: a high run queued behind a backlog of low ones starts at the next free thread.

    The threads are daemons: a run still going when the process exits (after the drain
    timeout) is abandoned, as a timed-out or cancelled one is (a thread cannot be killed).
    ``ended``, if given to ``submit``, is resolved when the function really returns, even
    after its result future was cancelled: the worker keeps the run's slot until then."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(32, (os.cpu_count() or 1) + 4)
        self._work: dict[Priority, collections.deque[ThreadRun]] = {
            band: collections.deque() for band in Priority}
        self._queued = 0  # runs in _work (changed under _ready)
        self._busy = 0  # threads between taking a run and its end (changed under _ready)
        self._ready = threading.Condition()
        self._picks = WeightedRoundRobin()
        self._incoming: list[tuple[ThreadRun, Priority]] = []  # this loop turn's submits
        self._ended: collections.deque[tuple[ThreadRun, Any, BaseException | None]] = (
            collections.deque())
        self._begun: collections.deque[ThreadRun] = collections.deque()  # for on_begin
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0

    def submit(self, function: Callable[[], Any], band: Priority = Priority.NORMAL,
               ended: asyncio.Future[None] | None = None,
               due: asyncio.Future[None] | None = None,
               on_begin: Callable[[float], None] | None = None) -> ThreadRun:
        """Queue a run for the threads; if ``due`` (an alarm: ``Alarms.alarm``) is given,
        once it rings: the runs due at one instant are handed over together then, no task
        woken for any of them (a run cancelled before is never queued)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop: what a closed one left to hand over is moot
            self._loop, self._incoming = loop, []
            self._wake_pending = False
        run = ThreadRun(function, loop.create_future(), ended, on_begin)
        if due is None or due.done():
            self._queue(run, band)
        else:
            due.add_done_callback(functools.partial(self._rang, run, band))
        return run

    def _rang(self, run: ThreadRun, band: Priority, due: asyncio.Future[None]) -> None:
        if not run.future.cancelled():
            self._queue(run, band)
        elif run.ended is not None and not run.ended.done():
            run.ended.set_result(None)  # cancelled before it was due: never called

    def _queue(self, run: ThreadRun, band: Priority) -> None:
        if not self._incoming:
            run.future.get_loop().call_soon(self._hand_over)
        self._incoming.append((run, band))

    def called(self, run: ThreadRun) -> bool:
        """Whether a thread has called the run's function, or will: once its future is
        cancelled (a timeout, a cancel), this answer does not change."""
        with self._lock:
            return run.began is not None

    def _hand_over(self) -> None:
        """Queue this loop turn's runs for the threads and wake as many as they need,
        starting threads (up to ``threads``) when the idle ones are too few."""
        incoming, self._incoming = self._incoming, []
        with self._ready:
            for run, band in incoming:
                self._work[band].append(run)
            self._queued += len(incoming)
            self._ready.notify(len(incoming))
            free = self._started - self._busy  # waiting, or on their way back for more
            lacking = min(self._queued - free, self.threads - self._started)
        for _ in range(max(0, lacking)):
            self._started += 1
            threading.Thread(target=self._serve, name=f"task-{self._started}",
                             daemon=True).start()

    def _next(self) -> ThreadRun:
        with self._ready:
            while not self._queued:
                self._ready.wait()
            self._queued -= 1
            self._busy += 1
            waiting = [band for band, work in self._work.items() if work]
            band = waiting[0] if len(waiting) == 1 else self._picks.pick(waiting)
            return self._work[band].popleft()

    def _serve(self) -> None:
        while True:
            run = self._next()
            with self._lock:  # against a cancel that reads began (called)
                skipped = run.future.cancelled()  # cancelled or timed out while it waited
                if not skipped:
                    run.began = time.time()
            if skipped:
                value, error = None, None
            else:
                if run.on_begin is not None:
                    self._begun.append(run)
                    self._wake()
                try:
                    value, error = run.function(), None
                except BaseException as exc:  # noqa: BLE001 - the task's failure, handed back
                    value, error = None, exc
            with self._ready:  # free before the loop hears of it: a run it queues then is ours
                self._busy -= 1
            self._ended.append((run, value, error))
            self._wake()

    def _wake(self) -> None:
        """Have the loop deliver what the threads noted (once for all noted meanwhile)."""
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop closed: nobody waits for these any more
            with self._lock:
                self._wake_pending = False

    def _deliver(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._begun:
            run = self._begun.popleft()
            if (run.on_begin is not None and run.began is not None
                    and run.future.get_loop() is self._loop):
                run.on_begin(run.began)
        while self._ended:
            run, value, error = self._ended.popleft()
            future, ended = run.future, run.ended
            if future.get_loop() is not self._loop:
                continue  # asked for by a closed loop
            if ended is not None and not ended.done():
                ended.set_result(None)
            if future.done():
                continue  # timed out or cancelled meanwhile
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)


async def run_python(
    payload: dict[str, Any],
    timeout_s: float,
    output_limit: int,
    registry: TaskRegistry,
    context: TaskContext,
    threads: ThreadRunner | None = None,
    band: Priority = Priority.NORMAL,
    masked: Sequence[str] = (),
    node: NodeInputs | None = None,
    linger: Callable[[asyncio.Future[None]], None] | None = None,
    killed: Callable[[str], None] | None = None,
    output: OutputBuffer | None = None,
    due: datetime | None = None,
    began: Callable[[float], None] | None = None,
    alarms: Alarms = _ALARMS,
) -> AttemptResult:
    """``due``: the run starts then, not before (a run claimed ahead of its time), and its
    timeout counts from then; a plain function on ``threads`` is queued for them by an
    alarm of ``alarms`` (the worker's own: one timer per instant for all its runs), with
    no task woken for it at that instant; ``began`` is told, on the loop, when its thread
    called it. ``masked``: values no recorded output or error may show (the worker's own
    credentials), masked before either is cut to its limit. A workflow node
    (``node`` given) is also passed ``upstream`` and ``input`` if it declares them, and its
    return value is kept as JSON for its children: a value that is not JSON, or larger
    than the output limit, fails the run. ``linger`` is called, when a plain function's
    run on ``threads`` that a thread has called times out or is cancelled (one that no
    thread called never will be), with a future resolved once its thread really ends
    (the worker holds the run's slot until then). A task registered with
    ``isolation="process"`` runs in a child process instead, killed on a timeout or a
    cancel; ``killed`` is told how when a cancel killed it.

    What the function prints and logs, and its traceback if it raises, go to ``output``
    (jobsched.worker.capture), which the worker streams while the run goes on; the
    recorded output is that, then the return value's JSON (alone, as before, when the
    function wrote nothing)."""
    if output is None:
        output = OutputBuffer(output_limit + longest(masked))
    name = payload["function"]
    function = registry.get(name)
    if function is None:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"function {name!r} is not registered on this worker")
    kwargs = dict(payload.get("args") or {})
    declared = registry.parameters(function)
    if "context" in declared:
        kwargs["context"] = context
    if node is not None:
        if "upstream" in declared:
            kwargs["upstream"] = node.upstream
        if "input" in declared:
            kwargs["input"] = node.input
    alarm = None if due is None else alarms.alarm(due)
    lead = 0.0 if alarm is None or due is None else max(0.0, due.timestamp() - time.time())
    if registry.isolation(name) == "process":
        if alarm is not None:
            await alarm
        return await _run_in_process(name, function, kwargs, timeout_s, output_limit, masked,
                                     node, killed, output)
    thread_run: ThreadRun | None = None
    on_thread = False
    try:
        # Not wait_for: no extra task per run (the start of many runs due at the same
        # instant is this function's cost times their number); and not asyncio.timeout:
        # no timer per run either (jobsched.worker.deadlines).
        async with _DEADLINES.timeout(timeout_s + lead):
            if not registry.on_thread(name):  # a coroutine function: on the loop
                if alarm is not None:
                    await alarm
                with routed_to(output):
                    value = await await_with_traceback(function, kwargs, output)
            else:
                # A thread cannot be killed: on timeout or cancel the attempt ends at once
                # and the thread runs out; ``linger`` is given what resolves when it does.
                on_thread = True
                call = functools.partial(call_with_traceback, function, kwargs, output)
                if threads is None and alarm is not None:
                    await alarm
                if threads is not None:
                    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    thread_run = threads.submit(call, band, ended, alarm, began)
                    try:
                        value = await thread_run.future
                    except asyncio.CancelledError:
                        if not threads.called(thread_run):  # and never will be: nothing lingers
                            if not ended.done():
                                ended.set_result(None)
                        elif linger is not None and not ended.done():
                            linger(ended)
                        raise
                else:
                    value = await asyncio.get_running_loop().run_in_executor(None, call)
    except TimeoutError:
        if threads is not None and thread_run is not None and not threads.called(thread_run):
            return AttemptResult(AttemptOutcome.TIMED_OUT,
                                 error=f"timed out after {timeout_s:g}s waiting for one of "
                                       f"the worker's {threads.threads} task threads: the "
                                       "function was not called",
                                 output=output.render(output_limit, masked))
        error = f"timed out after {timeout_s:g}s"
        if on_thread:
            error += f"; {THREAD_NOT_INTERRUPTED}"
        result = AttemptResult(AttemptOutcome.TIMED_OUT, error=error,
                               output=output.render(output_limit, masked))
    except Exception as exc:  # noqa: BLE001 - the task's failure is the attempt's outcome
        result = AttemptResult(AttemptOutcome.FAILED,
                               error=mask_bounded(f"{type(exc).__name__}: {exc}", masked, 4000),
                               output=output.render(output_limit, masked))
    else:
        result = _succeeded(value, output_limit, masked, node, output)
    if thread_run is not None and thread_run.began is not None:
        return dataclasses.replace(result, began=thread_run.began)
    return result


def _succeeded(value: Any, output_limit: int, masked: Sequence[str],
               node: NodeInputs | None, output: OutputBuffer) -> AttemptResult:
    """The output is what the function wrote, then its return value's JSON on a line of
    its own (a workflow node's value as its children get it)."""
    if node is not None:
        result = node_result(value, output_limit, masked)
        if result.outcome == AttemptOutcome.SUCCEEDED and result.output is not None:
            _append_value(output, result.output.encode())
        return dataclasses.replace(result, output=output.render(output_limit, masked))
    if value is not None:
        try:
            rendered = orjson.dumps(value, default=repr)
        except TypeError:
            rendered = repr(value).encode()
        _append_value(output, rendered)
    return AttemptResult(AttemptOutcome.SUCCEEDED, output=output.render(output_limit, masked))


def _append_value(output: OutputBuffer, rendered: bytes) -> None:
    data, total = output.snapshot()
    if total and not data.endswith(b"\n"):
        output.write(b"\n")
    output.write(rendered)


class _NotJson:
    """A child process's return value that was not JSON: only its repr came back."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


async def _run_in_process(
    name: str,
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    timeout_s: float,
    output_limit: int,
    masked: Sequence[str],
    node: NodeInputs | None,
    killed: Callable[[str], None] | None,
    output: OutputBuffer,
) -> AttemptResult:
    """A task registered with ``isolation="process"``: one child process per run
    (jobsched.worker.child), in a session of its own, killed with all it started on a
    timeout or a cancel. ``killed`` is told how, when a cancel killed it. Whatever the
    child writes to stdout or stderr (prints, log records, a traceback), and whatever it
    starts writes there, is read into ``output`` as it comes."""
    context = kwargs.pop("context", None)
    request = {
        "sys_path": sys.path, "module": function.__module__, "name": name, "kwargs": kwargs,
        "context": None if context is None else {
            "execution_id": str(context.execution_id), "attempt": context.attempt,
            "job_id": str(context.job_id), "scheduled_for": context.scheduled_for.isoformat()},
        "log_level": logging.getLogger().getEffectiveLevel(),
    }
    try:
        encoded = orjson.dumps(request)
    except TypeError as exc:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"the arguments cannot be passed to a child process as "
                                   f"JSON ({exc})")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobsched.worker.child", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    assert child.stderr is not None
    reading = asyncio.ensure_future(read_into(child.stderr, output))
    try:
        async with asyncio.timeout(timeout_s):
            answer = await _answer_of(child, encoded)
    except TimeoutError:
        how = await _kill(child)
        await _stop_reading(reading)
        return AttemptResult(AttemptOutcome.TIMED_OUT,
                             error=f"timed out after {timeout_s:g}s; process killed ({how})",
                             output=output.render(output_limit, masked))
    except asyncio.CancelledError:
        how = await asyncio.shield(_kill(child))
        reading.cancel()
        if killed is not None:
            killed(f"process killed ({how})")
        raise
    await _stop_reading(reading)
    try:
        reply = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"the task's child process (pid {child.pid}) ended with "
                                   f"exit code {child.returncode} without an answer",
                             output=output.render(output_limit, masked))
    if "error" in reply:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=mask_bounded(str(reply["error"]), masked, 4000),
                             output=output.render(output_limit, masked))
    if "repr" in reply:
        return _succeeded(_NotJson(str(reply["repr"])), output_limit, masked, node, output)
    return _succeeded(reply.get("value"), output_limit, masked, node, output)


async def _answer_of(child: asyncio.subprocess.Process, request: bytes) -> bytes:
    """Send the request, read the answer to EOF, and wait for the child to exit."""
    assert child.stdin is not None and child.stdout is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        child.stdin.write(request)
        await child.stdin.drain()
    child.stdin.close()
    answer = await child.stdout.read()
    await child.wait()
    return answer


async def _stop_reading(reading: asyncio.Future[None], grace: float = 1.0) -> None:
    """Let the child's output drain (a moment: what it started may hold the pipe open),
    then stop reading."""
    try:
        await asyncio.wait_for(asyncio.shield(reading), grace)
    except TimeoutError:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


#: How long a task's child process has to end after SIGTERM before it is sent SIGKILL.
KILL_GRACE_S = 3.0


async def _kill(child: asyncio.subprocess.Process) -> str:
    """SIGTERM to the child's session, SIGKILL to it after ``KILL_GRACE_S``: how it went."""
    if child.returncode is not None:
        return f"pid {child.pid} had already exited"
    how = f"pid {child.pid}, SIGTERM"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(child.wait(), KILL_GRACE_S)
    except TimeoutError:
        how = f"pid {child.pid}, SIGKILL {KILL_GRACE_S:g}s after SIGTERM"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        await child.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)  # whatever it started and left behind
    return how


def node_result(value: Any, limit: int, masked: Sequence[str] = ()) -> AttemptResult:
    """A workflow node's return value: JSON its children can be given, no larger than the
    output limit (it is stored with the execution, as output is), masked as output is."""
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"the return value is not JSON ({exc}): a workflow node "
                                   "returns what its children are given")
    text = mask(encoded.decode(), masked) or "null"
    if len(text.encode()) > limit:
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"the return value is {len(text.encode())} bytes of JSON, "
                                   f"more than output_limit_bytes={limit}")
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return AttemptResult(AttemptOutcome.FAILED,
                             error="the return value holds a masked secret in a way that "
                                   "leaves no valid JSON once masked")
    return AttemptResult(AttemptOutcome.SUCCEEDED, output=None if value is None else text,
                         result=text)
