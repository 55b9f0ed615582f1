"""Confinement of shell jobs: who they run as, what they see, how much they may use.

Each run gets an unprivileged user (``shell_user``; "nobody" when the worker is root), an
environment of PATH, HOME and LANG plus the job's own ``env``, a fresh private directory
(its HOME and, unless the job names a ``cwd``, its working directory) removed when the run
ends, and resource limits set in the child before ``exec``: CPU seconds, address space,
open files, file size, processes, no core dumps.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from jobsched.settings import Settings

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_GRACE_S = 5  # SIGXCPU at the soft limit, SIGKILL this much later
CWD_FAILED_EXIT = 126


class SandboxError(Exception):
    """The run cannot be confined as configured: it must not start at all."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int


@dataclass(frozen=True)
class ShellSandbox:
    user: str | None = None  # None: run as the worker's own user
    cpu_s: int = 0
    memory_bytes: int = 0
    open_files: int = 0
    file_size_bytes: int = 0
    max_processes: int = 0
    work_root: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ShellSandbox:
        user = settings.shell_user
        if user is None and os.geteuid() == 0:
            user = "nobody"
        return cls(user=user, cpu_s=settings.shell_cpu_s,
                   memory_bytes=settings.shell_memory_bytes,
                   open_files=settings.shell_open_files,
                   file_size_bytes=settings.shell_file_size_bytes,
                   max_processes=settings.shell_max_processes,
                   work_root=settings.shell_work_root)

    def identity(self) -> Identity | None:
        """The user to switch to, or None to stay the worker's own user."""
        if self.user is None:
            return None
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise SandboxError(f"shell_user {self.user!r} does not exist on this "
                               "worker") from None
        if entry.pw_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise SandboxError(f"the worker runs as uid {os.geteuid()} and cannot switch "
                               f"to shell_user {self.user!r}; run it as root or unset "
                               "shell_user")
        return Identity(self.user, entry.pw_uid, entry.pw_gid)

    def limits(self, switching_user: bool) -> list[tuple[int, tuple[int, int]]]:
        """(resource, (soft, hard)) to set in the child; none above the worker's own."""
        wanted = [(resource.RLIMIT_CORE, 0, 0)]  # a core dump could hold secrets
        if self.cpu_s:
            wanted.append((resource.RLIMIT_CPU, self.cpu_s, self.cpu_s + CPU_GRACE_S))
        if self.memory_bytes:
            wanted.append((resource.RLIMIT_AS, self.memory_bytes, self.memory_bytes))
        if self.open_files:
            wanted.append((resource.RLIMIT_NOFILE, self.open_files, self.open_files))
        if self.file_size_bytes:
            wanted.append((resource.RLIMIT_FSIZE, self.file_size_bytes,
                           self.file_size_bytes))
        if self.max_processes and switching_user:
            # Counted per user, so only meaningful for a user of its own (not the worker's).
            wanted.append((resource.RLIMIT_NPROC, self.max_processes, self.max_processes))
        capped = []
        for which, soft, hard in wanted:
            _, current_hard = resource.getrlimit(which)
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
                soft = min(soft, hard)
            capped.append((which, (soft, hard)))
        return capped

    def environment(self, home: str, job_env: dict[str, str]) -> dict[str, str]:
        return {"PATH": SAFE_PATH, "HOME": home, "LANG": "C.UTF-8", **job_env}

    @contextlib.contextmanager
    def workdir(self, identity: Identity | None) -> Iterator[str]:
        """A fresh directory only the run's user can enter, removed afterwards."""
        path = tempfile.mkdtemp(prefix="jobsched-run-", dir=self.work_root)
        try:
            if identity is not None:
                os.chown(path, identity.uid, identity.gid)
            os.chmod(path, 0o700)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def child_setup(limits: list[tuple[int, tuple[int, int]]], cwd: str | None) -> Callable[[], None]:
    """What the child runs between fork and exec, after it has dropped to the run's user:
    only system calls, so it is safe in a forked copy of a threaded process."""
    encoded_cwd = os.fsencode(cwd) if cwd else None
    message = b"jobsched: cannot enter cwd: "

    def setup() -> None:
        for which, values in limits:
            resource.setrlimit(which, values)
        if encoded_cwd is not None:
            try:
                os.chdir(encoded_cwd)  # as the run's user: its own permissions apply
            except OSError as exc:
                os.write(2, message + os.fsencode(exc.strerror or "error") + b"\n")
                os._exit(CWD_FAILED_EXIT)

    return setup
