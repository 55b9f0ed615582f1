"""Shell runs: argv under a uid of the run's own (jobsched.worker.sandbox), output captured,
masked and truncated; the process group killed on timeout or cancel, and every process of
the run's uid killed when the run ends, however it ends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from jobsched.domain.states import AttemptOutcome
from jobsched.worker.capture import OutputBuffer
from jobsched.worker.results import AttemptResult, render_output
from jobsched.worker.sandbox import Identity, SandboxError, ShellSandbox
from jobsched.worker.secrets import MissingSecret, RunSecrets, longest, mask


def _read_pipe(fd: int, output: OutputBuffer) -> asyncio.Task[None]:
    """Read the pipe's read end ``fd`` to EOF into ``output`` as it comes (it keeps its
    head, counts the rest), from the loop; the fd is closed once the task ends, however it
    ends (even cancelled before its first step).

    One owner of the fd, on purpose: a pipe transport (``connect_read_pipe``) under uvloop
    closes its fd a second time after the file object it was given does, and a number
    reused in between is another's (MagicStack/uvloop#763)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    async def read() -> None:
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        while True:
            try:
                chunk = os.read(fd, 65_536)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not chunk:
                return
            output.write(chunk)
            await asyncio.sleep(0)  # a writer that keeps the pipe full does not hold the loop

    def close(_: asyncio.Task[None]) -> None:
        try:
            loop.remove_reader(fd)
        finally:
            os.close(fd)

    task = asyncio.ensure_future(read())
    task.add_done_callback(close)
    return task


#: One thread forks every shell run of the worker, one at a time (created on first use).
_spawner: concurrent.futures.ThreadPoolExecutor | None = None


class _Child:
    """A run's process, forked off the event loop (see ``_spawn``); its exit is seen
    through a pidfd in the loop, then reaped."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except OSError:  # no pidfd (a kernel before 5.3): a thread waits for it
            self._pidfd = -1
            waiting = loop.run_in_executor(None, popen.wait)
            waiting.add_done_callback(lambda _: self._reap())
        else:
            loop.add_reader(self._pidfd, self._reap)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _reap(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        code = self._popen.wait()  # it has exited: no wait
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


async def _spawn(argv: list[str], **options: Any) -> _Child:
    """``subprocess.Popen(argv, **options)`` in the spawning thread, not in the loop.

    A run switches to its own uid (and a preexec_fn sets its limits), so Python cannot
    use vfork: it forks the whole worker (~2.5 ms for ~80 MB) and waits for the child to
    exec (~6 ms in all). In the loop that stalled everything else the worker does: 8 shell
    runs starting together held it 90-125 ms, 16 of them 170-210 ms (an immediate job
    landing then started that much later: `jobsched bench soak`). In one thread of its
    own, forks one at a time, the loop stalls only while a fork holds the GIL: ~10 ms at
    most for the same 8 or 16, and the runs start as soon as before."""
    global _spawner
    if _spawner is None:
        _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jobsched-spawn")
    started = asyncio.get_running_loop().run_in_executor(
        _spawner, lambda: subprocess.Popen(argv, **options))
    try:
        popen = await asyncio.shield(started)
    except asyncio.CancelledError:  # it starts all the same: reaped once it has exited
        started.add_done_callback(
            lambda done: None if done.exception() is not None else _Child(done.result()))
        raise
    return _Child(popen)


def _kill_group(process: _Child) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_shell(payload: dict[str, Any], timeout_s: float, output_limit: int,
                    sandbox: ShellSandbox, secrets: RunSecrets,
                    output: OutputBuffer | None = None) -> AttemptResult:
    """Run argv confined by ``sandbox`` (docs/security.md): a uid of its own, a clean
    environment, a private directory, resource limits. Secret references in env are
    resolved in the job's namespace and masked in what is recorded. Its stdout and
    stderr are read into ``output`` as they come (the worker streams it meanwhile)."""
    try:
        job_env = await secrets.resolve(payload.get("env") or {})
    except MissingSecret as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    if output is not None:  # past the limit, keep enough to mask the values just resolved
        output.keep = max(output.keep, output_limit + longest(secrets.masked))
    try:
        async with sandbox.run_slot() as (identity, home):
            result = await _run_confined(payload, timeout_s, output_limit, sandbox,
                                         identity, home, job_env, secrets.masked, output)
    except SandboxError as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    return AttemptResult(result.outcome, result.exit_code,
                         mask(result.error, secrets.masked), result.output)


async def _run_confined(payload: dict[str, Any], timeout_s: float, output_limit: int,
                        sandbox: ShellSandbox, identity: Identity, home: str,
                        job_env: dict[str, str], masked: list[str],
                        output: OutputBuffer | None = None) -> AttemptResult:
    program = payload["argv"][0]
    # Output through a pipe of our own, not the subprocess transport's: its wait() would
    # also wait for the pipe to close, which a process the run left behind can delay.
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        process = await _spawn(
            list(payload["argv"]),
            env=sandbox.environment(home, job_env),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.STDOUT,
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
    except asyncio.CancelledError:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    # Past the limit, keep as much as the longest secret: one that straddles the limit is
    # then whole when it is masked, before the cut.
    if output is None:
        output = OutputBuffer(output_limit + longest(masked))
    reading = _read_pipe(read_end, output)

    async def kill_all() -> None:
        _kill_group(process)
        await sandbox.kill_run(identity)

    def rendered() -> str:
        return render_output(*output.snapshot(), output_limit, masked)

    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), timeout_s)
    except TimeoutError:
        await kill_all()
        await process.wait()
        await _finish_reading(reading, kill_all)
        return AttemptResult(
            AttemptOutcome.TIMED_OUT,
            exit_code=process.returncode,
            error=f"timed out after {timeout_s:g}s; every process of the run killed",
            output=rendered(),
        )
    except asyncio.CancelledError:
        _kill_group(process)
        reading.cancel()  # its fd is closed as it ends
        raise  # the sandbox kills the rest of the run's uid on the way out
    # Processes the run left may hold the pipe open after the main one exits: a moment to
    # flush, then the run is over and they are killed (nothing it started outlives it).
    await _finish_reading(reading, kill_all, grace=1.0)
    code = process.returncode
    if code == 0:
        return AttemptResult(AttemptOutcome.SUCCEEDED, exit_code=0, output=rendered())
    error = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGXCPU:
        error += f" (SIGXCPU: over its CPU time limit, shell_cpu_s={sandbox.cpu_s})"
    return AttemptResult(AttemptOutcome.FAILED, exit_code=code, error=error,
                         output=rendered())


async def _finish_reading(reading: asyncio.Future[None],
                          kill_all: Callable[[], Awaitable[None]],
                          grace: float = 2.0) -> None:
    """Read to EOF; past ``grace``, kill what still holds the pipe, and past 2 s more
    keep what was read."""
    try:
        await asyncio.wait_for(asyncio.shield(reading), grace)
    except TimeoutError:
        await kill_all()  # every writer of the pipe is gone: EOF follows at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, 2.0)
