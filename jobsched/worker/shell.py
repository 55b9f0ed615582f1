"""Shell runs: argv in a confined child (jobsched.worker.sandbox), output captured and
truncated, the process group killed on timeout or cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import replace
from typing import Any

from jobsched.domain.states import AttemptOutcome
from jobsched.worker.results import AttemptResult
from jobsched.worker.sandbox import Identity, SandboxError, ShellSandbox, child_setup
from jobsched.worker.secrets import MissingSecret, SecretSource, mask


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
    try:
        job_env, used = (secrets or SecretSource()).resolve(payload.get("env") or {})
        identity = sandbox.identity()
    except (MissingSecret, SandboxError) as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
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
        return AttemptResult(AttemptOutcome.FAILED,
                             error=f"cannot start {program!r}: {exc.strerror}")
    except (OSError, subprocess.SubprocessError) as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=f"cannot start {program!r}: {exc}")
    assert process.stdout is not None
    reading = asyncio.ensure_future(_read_capped(process.stdout, output_limit))
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), timeout_s)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        output, dropped = await _finish_reading(reading)
        return AttemptResult(
            AttemptOutcome.TIMED_OUT,
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
        return AttemptResult(AttemptOutcome.SUCCEEDED, exit_code=0, output=_render(output, dropped))
    error = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGXCPU:
        error += f" (SIGXCPU: over its CPU time limit, shell_cpu_s={sandbox.cpu_s})"
    return AttemptResult(AttemptOutcome.FAILED, exit_code=code, error=error,
                         output=_render(output, dropped))


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


