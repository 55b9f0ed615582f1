"""One ``python -m jobsched run --role …`` process, as an operator would start it: the
dev cluster, the benchmark and the end-to-end and chaos tests all start, probe, signal and
stop their role processes through :class:`RoleProcess`.

Synchronous on purpose (``subprocess`` and ``urllib``): it only spawns, signals and probes,
so an async caller can use it directly or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobsched_dev import SOURCE_ROOT

_PR_SET_PDEATHSIG = 1


class ProcessFailed(RuntimeError):
    """A role process exited, or did not become ready in time (the message has its log)."""


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def source_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this checkout on PYTHONPATH (after what is there), so a child started
    from any directory runs this checkout's ``jobsched`` and can import ``jobsched_dev``
    (the benchmark's task module, the Celery peer's app)."""
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(SOURCE_ROOT) not in paths:
        paths.append(str(SOURCE_ROOT))
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, so no role outlives it (Linux).
    The signal follows the launcher's *thread* that forked, so only a launcher that starts
    processes from its main thread (``jobsched dev cluster``) asks for it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class RoleProcess:
    """One role process. ``port`` is its api port when it hosts the api (``api`` or
    ``all``), else its health/metrics port; both serve /healthz and /readyz.

    ``new_session`` puts it in a session of its own, so a Ctrl-C in the launcher's terminal
    reaches only the launcher, which then stops the roles in order. Its output goes to
    ``log_path``; a restart appends, after a ``--- HH:MM:SS starting NAME`` line.
    """

    name: str
    roles: tuple[str, ...]
    port: int
    env: dict[str, str]
    log_path: Path
    args: tuple[str, ...] = ()
    cwd: Path | None = None
    new_session: bool = False
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def hosts(self, role: str) -> bool:
        """Whether this process runs ``role`` (``all`` runs every role)."""
        return role in self.roles or "all" in self.roles

    def command(self) -> list[str]:
        roles = [arg for role in self.roles for arg in ("--role", role)]
        return [sys.executable, "-m", "jobsched", "run", *roles, *self.args]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> RoleProcess:
        if self.alive:
            return self
        with self.log_path.open("ab") as log:
            if log.tell():
                log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command(), env=source_env(self.env), cwd=self.cwd, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.started_at = time.monotonic()
        return self

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM (an orderly drain), then SIGKILL after ``timeout``; the exit code (None
        if it was never started)."""
        if self.process is None:
            return None
        self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 30) -> int | None:
        """Wait for a process already told to stop; SIGKILL after ``timeout``. (A second
        SIGTERM could kill a process whose loop is closing: its default action.)"""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    # -- probes ---------------------------------------------------------------------------

    def readyz(self, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        """(status, report) of /readyz; raises OSError if nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body else {}

    def is_ready(self, timeout: float = 2.0) -> bool:
        try:
            return self.readyz(timeout)[0] == 200
        except (OSError, ValueError):
            return False

    def is_leader(self, timeout: float = 1.0) -> bool:
        """Whether this scheduler reports itself leader (False if it does not answer)."""
        try:
            report = self.readyz(timeout)[1]
        except (OSError, ValueError):
            return False
        return bool((report.get("scheduler") or {}).get("leader"))

    def check_alive(self) -> None:
        """Raise ProcessFailed, with the log tail, if the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise ProcessFailed(f"{self.name} exited {self.process.returncode}:\n"
                                f"{self.log_tail()}")

    def wait_ready(self, timeout: float = 30, *, leader: bool = False,
                   poll_s: float = 0.05) -> dict[str, Any]:
        """Until /readyz answers 200 (and, with ``leader``, a scheduler in this process
        leads); its report. Raises ProcessFailed if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            self.check_alive()
            try:
                status, report = self.readyz(timeout=min(2.0, timeout))
            except (OSError, ValueError) as exc:
                last = exc
            else:
                last = report
                leading = (report.get("scheduler") or {}).get("leader", True)
                if status == 200 and (leading or not leader):
                    return report
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name} not ready in {timeout:g}s: {last}\n"
                                    f"{self.log_tail()}")
            time.sleep(poll_s)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
