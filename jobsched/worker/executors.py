"""Running one attempt of each job kind; every run ends in an AttemptResult, never raises."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from jobsched.tasks import TaskContext, TaskRegistry

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


async def run_shell(payload: dict[str, Any], timeout_s: float, output_limit: int) -> AttemptResult:
    env = {**os.environ, **payload.get("env", {})}
    try:
        process = await asyncio.create_subprocess_exec(
            *payload["argv"],
            env=env,
            cwd=payload.get("cwd"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on timeout
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return AttemptResult("failed", error=f"cannot start {payload['argv'][0]!r}: {exc.strerror}")
    except OSError as exc:
        return AttemptResult("failed", error=f"cannot start {payload['argv'][0]!r}: {exc}")
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
    code = process.returncode
    if code == 0:
        return AttemptResult("succeeded", exit_code=0, output=_render(output, dropped))
    error = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
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
    payload: dict[str, Any], timeout_s: float, output_limit: int, session: aiohttp.ClientSession
) -> AttemptResult:
    try:
        async with session.request(
            payload.get("method", "GET"),
            payload["url"],
            headers=payload.get("headers") or None,
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


async def run_python(
    payload: dict[str, Any],
    timeout_s: float,
    output_limit: int,
    registry: TaskRegistry,
    context: TaskContext,
) -> AttemptResult:
    name = payload["function"]
    function = registry.get(name)
    if function is None:
        return AttemptResult("failed", error=f"function {name!r} is not registered on this worker")
    kwargs = dict(payload.get("args") or {})
    if registry.wants_context(function):
        kwargs["context"] = context
    try:
        if inspect.iscoroutinefunction(function):
            value = await asyncio.wait_for(function(**kwargs), timeout_s)
        else:
            # A thread cannot be killed: on timeout the attempt ends, the thread runs out.
            value = await asyncio.wait_for(asyncio.to_thread(function, **kwargs), timeout_s)
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
