"""Running one attempt of each job kind; every run ends in an AttemptResult, never raises."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.sandbox import Identity, SandboxError, ShellSandbox, child_setup
from jobsched.worker.secrets import MissingSecret, SecretSource, mask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: str  # succeeded | failed | timed_out
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None


def truncate(data: bytes, limit: int) -> str:
    if len(data) <= limit:
        return data.decode("utf-8", errors="replace")
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n[output truncated: {len(data) - limit} more bytes]"


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    """Read to EOF keeping at most ``limit`` bytes (the rest is counted, not held)."""
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(65_536):
        room = limit - len(kept)
        kept += chunk[:room] if room > 0 else b""
        dropped += max(0, len(chunk) - max(room, 0))
    return bytes(kept), dropped


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_shell(payload: dict[str, Any], timeout_s: float, output_limit: int,
                    sandbox: ShellSandbox | None = None,
                    secrets: SecretSource | None = None) -> AttemptResult:
    """Run argv confined by ``sandbox`` (docs/security.md): its own user, environment,
    directory and resource limits. Secret values in env are resolved here and masked in
    what is recorded."""
    sandbox = sandbox or ShellSandbox()
    if sandbox.disabled:
        return AttemptResult("failed", error="shell jobs are disabled on this worker "
                                             "(disabled_kinds)")
    try:
        job_env, used = (secrets or SecretSource()).resolve(payload.get("env") or {})
        identity = sandbox.identity()
    except (MissingSecret, SandboxError) as exc:
        return AttemptResult("failed", error=str(exc))
    limits = sandbox.limits(switching_user=identity is not None)
    with sandbox.workdir(identity) as home:
        result = await _run_confined(payload, timeout_s, output_limit, sandbox, identity,
                                     limits, home, job_env)
    if not used:
        return result
    return replace(result, output=mask(result.output, used), error=mask(result.error, used))


async def _run_confined(payload: dict[str, Any], timeout_s: float, output_limit: int,
                        sandbox: ShellSandbox, identity: Identity | None,
                        limits: list[tuple[int, tuple[int, int]]], home: str,
                        job_env: dict[str, str]) -> AttemptResult:
    program = payload["argv"][0]
    try:
        process = await asyncio.create_subprocess_exec(
            *payload["argv"],
            env=sandbox.environment(home, job_env),
            cwd=home,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on timeout
            preexec_fn=child_setup(limits, payload.get("cwd")),
            umask=0o077,
            user=identity.uid if identity else None,
            group=identity.gid if identity else None,
            extra_groups=[] if identity else None,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return AttemptResult("failed", error=f"cannot start {program!r}: {exc.strerror}")
    except (OSError, subprocess.SubprocessError) as exc:
        return AttemptResult("failed", error=f"cannot start {program!r}: {exc}")
    assert process.stdout is not None
    reading = asyncio.ensure_future(_read_capped(process.stdout, output_limit))
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), timeout_s)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        output, dropped = await _finish_reading(reading)
        return AttemptResult(
            "timed_out",
            exit_code=process.returncode,
            error=f"timed out after {timeout_s:g}s; process group killed",
            output=_render(output, dropped),
        )
    except asyncio.CancelledError:
        _kill_group(process)
        reading.cancel()
        raise
    # The group may hold the pipe open after the leader exits; don't wait for it forever.
    output, dropped = await _finish_reading(reading, grace=1.0, process=process)
    _kill_group(process)  # nothing the run started outlives it
    code = process.returncode
    if code == 0:
        return AttemptResult("succeeded", exit_code=0, output=_render(output, dropped))
    error = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGXCPU:
        error += f" (SIGXCPU: over its CPU time limit, shell_cpu_s={sandbox.cpu_s})"
    return AttemptResult("failed", exit_code=code, error=error, output=_render(output, dropped))


async def _finish_reading(
    reading: asyncio.Future[tuple[bytes, int]],
    grace: float = 2.0,
    process: asyncio.subprocess.Process | None = None,
) -> tuple[bytes, int]:
    try:
        return await asyncio.wait_for(asyncio.shield(reading), grace)
    except TimeoutError:
        if process is not None:
            _kill_group(process)
        try:
            return await asyncio.wait_for(reading, 2.0)
        except TimeoutError:
            return b"", 0


def _render(output: bytes, dropped: int) -> str:
    text = output.decode("utf-8", errors="replace")
    return f"{text}\n[output truncated: {dropped} more bytes]" if dropped else text


async def run_http(
    payload: dict[str, Any], timeout_s: float, output_limit: int, session: aiohttp.ClientSession,
    secrets: SecretSource | None = None,
) -> AttemptResult:
    try:
        headers, used = (secrets or SecretSource()).resolve(payload.get("headers") or {})
    except MissingSecret as exc:
        return AttemptResult("failed", error=str(exc))
    for name, value in headers.items():
        if any(c in value for c in "\r\n\x00"):  # a secret file must not inject headers
            return AttemptResult("failed", error=f"header {name!r}: its value has a line "
                                                 "break or NUL")
    result = await _request(payload, headers, timeout_s, output_limit, session)
    if not used:
        return result
    return replace(result, output=mask(result.output, used), error=mask(result.error, used))


async def _request(
    payload: dict[str, Any], headers: dict[str, str], timeout_s: float, output_limit: int,
    session: aiohttp.ClientSession,
) -> AttemptResult:
    try:
        async with session.request(
            payload.get("method", "GET"),
            payload["url"],
            headers=headers or None,
            data=payload.get("body"),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(output_limit + 1)
            output = truncate(body, output_limit)
            status = response.status
    except TimeoutError:
        return AttemptResult("timed_out", error=f"timed out after {timeout_s:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return AttemptResult("failed", error=f"request failed: {exc!r}"[:2000])
    if 200 <= status < 300:
        return AttemptResult("succeeded", output=output)
    return AttemptResult("failed", error=f"HTTP {status}", output=output)


class ThreadRunner:
    """Threads that run plain-function tasks, cheaper for the event loop than
    ``run_in_executor``: a start is one put on a queue, and results come back in batches
    (one loop wake-up for all the runs that ended meanwhile). Runs due at the same instant
    are started one after another on the loop, so this per-start cost, times their number,
    is the lateness of the last one (``jobsched bench lateness``).

    The threads are daemons: a run still going when the process exits (after the drain
    timeout) is abandoned, as a timed-out one is (a thread cannot be killed)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(32, (os.cpu_count() or 1) + 4)
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]] = \
            queue.SimpleQueue()
        self._ended: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] \
            = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0

    def submit(self, function: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._work.put((function, future))
        if self._started < self.threads:  # threads start as the work needs them
            self._started += 1
            threading.Thread(target=self._serve, name=f"task-{self._started}",
                             daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            function, future = self._work.get()
            try:
                value, error = function(), None
            except BaseException as exc:  # noqa: BLE001 - the task's failure, handed back
                value, error = None, exc
            self._ended.append((future, value, error))
            with self._lock:
                if self._wake_pending:
                    continue
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
        while self._ended:
            future, value, error = self._ended.popleft()
            if future.done() or future.get_loop() is not self._loop:
                continue  # timed out or cancelled meanwhile, or asked for by a closed loop
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
) -> AttemptResult:
    name = payload["function"]
    function = registry.get(name)
    if function is None:
        return AttemptResult("failed", error=f"function {name!r} is not registered on this worker")
    kwargs = dict(payload.get("args") or {})
    if registry.wants_context(function):
        kwargs["context"] = context
    try:
        # asyncio.timeout, not wait_for: no extra task per run (the start of many runs due
        # at the same instant is this function's cost times their number).
        async with asyncio.timeout(timeout_s):
            if inspect.iscoroutinefunction(function):
                value = await function(**kwargs)
            else:
                # A thread cannot be killed: on timeout the attempt ends, the thread runs out.
                call = functools.partial(function, **kwargs)
                if threads is not None:
                    value = await threads.submit(call)
                else:
                    value = await asyncio.get_running_loop().run_in_executor(None, call)
    except TimeoutError:
        return AttemptResult("timed_out", error=f"timed out after {timeout_s:g}s")
    except Exception as exc:  # noqa: BLE001 - the task's failure is the attempt's outcome
        return AttemptResult("failed", error=f"{type(exc).__name__}: {exc}"[:4000])
    if value is None:
        return AttemptResult("succeeded")
    try:
        rendered = orjson.dumps(value, default=repr)
    except TypeError:
        rendered = repr(value).encode()
    return AttemptResult("succeeded", output=truncate(rendered, output_limit))
