"""Shell runs: argv under a uid of the run's own (jobsched.worker.sandbox), output captured,
masked and truncated; the process group killed on timeout or cancel, and every process of
the run's uid killed when the run ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from jobsched.domain.states import AttemptOutcome
from jobsched.worker.results import AttemptResult, render_output
from jobsched.worker.sandbox import Identity, SandboxError, ShellSandbox
from jobsched.worker.secrets import MissingSecret, RunSecrets, longest, mask

Captured = tuple[bytes, int]  # what was kept, and how many bytes there were in all


async def _open_pipe(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream, loop=loop), os.fdopen(fd, "rb", 0))
    return stream, transport


async def _read_capped(stream: asyncio.StreamReader, transport: asyncio.ReadTransport,
                       keep: int) -> Captured:
    """Read the pipe to EOF keeping at most ``keep`` bytes (the rest is counted, not held),
    then close it."""
    kept = bytearray()
    total = 0
    try:
        while chunk := await stream.read(65_536):
            total += len(chunk)
            room = keep - len(kept)
            if room > 0:
                kept += chunk[:room]
    finally:
        transport.close()
    return bytes(kept), total


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_shell(payload: dict[str, Any], timeout_s: float, output_limit: int,
                    sandbox: ShellSandbox, secrets: RunSecrets) -> AttemptResult:
    """Run argv confined by ``sandbox`` (docs/security.md): a uid of its own, a clean
    environment, a private directory, resource limits. Secret references in env are
    resolved in the job's namespace and masked in what is recorded."""
    try:
        job_env = await secrets.resolve(payload.get("env") or {})
    except MissingSecret as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    try:
        async with sandbox.run_slot() as (identity, home):
            result = await _run_confined(payload, timeout_s, output_limit, sandbox,
                                         identity, home, job_env, secrets.masked)
    except SandboxError as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    return AttemptResult(result.outcome, result.exit_code,
                         mask(result.error, secrets.masked), result.output)


async def _run_confined(payload: dict[str, Any], timeout_s: float, output_limit: int,
                        sandbox: ShellSandbox, identity: Identity, home: str,
                        job_env: dict[str, str], masked: list[str]) -> AttemptResult:
    program = payload["argv"][0]
    # Output through a pipe of our own, not the subprocess transport's: its wait() would
    # also wait for the pipe to close, which a process the run left behind can delay.
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        process = await asyncio.create_subprocess_exec(
            *payload["argv"],
            env=sandbox.environment(home, job_env),
            cwd=home,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on timeout
            preexec_fn=sandbox.child_setup(payload.get("cwd")),
            umask=0o077,
            user=identity.uid,
            group=identity.gid,
            extra_groups=[],
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        os.close(read_end)
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"cannot start {program!r}: {exc.strerror}")
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(read_end)
        return AttemptResult(AttemptOutcome.FAILED, error=f"cannot start {program!r}: {exc}")
    finally:
        os.close(write_end)
    # Past the limit, keep as much as the longest secret: one that straddles the limit is
    # then whole when it is masked, before the cut.
    stream, transport = await _open_pipe(read_end)
    reading = asyncio.ensure_future(_read_capped(stream, transport,
                                                 output_limit + longest(masked)))

    async def kill_all() -> None:
        _kill_group(process)
        await sandbox.kill_run(identity)

    def rendered(captured: Captured) -> str:
        return render_output(captured[0], captured[1], output_limit, masked)

    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), timeout_s)
    except TimeoutError:
        await kill_all()
        await process.wait()
        captured = await _finish_reading(reading, kill_all)
        return AttemptResult(
            AttemptOutcome.TIMED_OUT,
            exit_code=process.returncode,
            error=f"timed out after {timeout_s:g}s; every process of the run killed",
            output=rendered(captured),
        )
    except asyncio.CancelledError:
        _kill_group(process)
        reading.cancel()
        transport.close()
        raise  # the sandbox kills the rest of the run's uid on the way out
    # Processes the run left may hold the pipe open after the main one exits: a moment to
    # flush, then the run is over and they are killed (nothing it started outlives it).
    captured = await _finish_reading(reading, kill_all, grace=1.0)
    code = process.returncode
    if code == 0:
        return AttemptResult(AttemptOutcome.SUCCEEDED, exit_code=0, output=rendered(captured))
    error = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGXCPU:
        error += f" (SIGXCPU: over its CPU time limit, shell_cpu_s={sandbox.cpu_s})"
    return AttemptResult(AttemptOutcome.FAILED, exit_code=code, error=error,
                         output=rendered(captured))


async def _finish_reading(reading: asyncio.Future[Captured],
                          kill_all: Callable[[], Awaitable[None]],
                          grace: float = 2.0) -> Captured:
    try:
        return await asyncio.wait_for(asyncio.shield(reading), grace)
    except TimeoutError:
        await kill_all()  # every writer of the pipe is gone: EOF follows at once
        try:
            return await asyncio.wait_for(reading, 2.0)
        except TimeoutError:
            return b"", 0
