"""Confinement of shell jobs: who they run as, what they see, how much they may use, and
that nothing of theirs outlives them.

**A uid of its own per run.** A worker holds a block of ``shell_concurrency`` numeric uids
(``shell_uid_base`` on; no passwd or group entry may use them) and runs each shell run
under one of them that no other run is using (gid the same number, no supplementary
groups, ``no_new_privs`` so a set-uid program cannot raise it). So a run cannot signal,
trace or read ``/proc/<pid>/environ`` of another run or of the worker (which stays root),
and when a run ends *everything* of its uid is killed: a forked helper switches to that
uid and calls ``kill(-1, SIGKILL)``, which reaches every process of the uid whatever it
did (``setsid``, double fork, ``nohup``) and nothing else; the slot is reused only once
``/proc`` shows no process of the uid, and the files the uid left in the shared temporary
directories are removed. Chosen over a cgroup v2 ``cgroup.kill`` (needs a delegated,
writable cgroup tree, which containers rarely have) and a subreaper (finds survivors
but cannot stop them from reading each other's environment, since they share a uid).

Several workers on one host take different blocks: each holds a POSIX lock on its block's
byte range of one lock file, and the next worker takes the next free block. A worker that
starts kills whatever still runs under its block (runs of a predecessor that died).

Each run also gets an environment of PATH, HOME and LANG plus the job's own ``env``, a
fresh private directory (its HOME and, unless the job names a ``cwd``, its working
directory) removed when the run ends, and resource limits set in the child before
``exec``: CPU seconds, address space, open files, file size, processes, no core dumps.

Only root (CAP_SETUID, CAP_SETGID) can switch to those uids: a worker that cannot refuses
shell runs, says so once at start-up and in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import grp
import logging
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from jobsched.settings import Settings

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_GRACE_S = 5  # SIGXCPU at the soft limit, SIGKILL this much later
CWD_FAILED_EXIT = 126
#: Blocks tried after shell_uid_base's own, when other workers on the host hold those:
#: at least this many, and as many as fit in MAX_UIDS (a worker with few shell slots
#: looks as far as one with the default 64, past the blocks other workers hold).
MAX_BLOCKS = 256
MAX_UIDS = 256 * 64
#: How long the end of a run waits for its uid's processes to be gone before the slot is
#: set aside (a process in uninterruptible sleep dies only when its I/O returns).
KILL_WAIT_S = 5.0
#: Shared writable directories where a run may leave files for a later run of its uid.
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
PR_SET_NO_NEW_PRIVS = 38


class SandboxError(Exception):
    """The run cannot be confined as configured: it must not start at all."""


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class ShellStatus:
    """Whether this worker runs shell jobs, and if not why (shown on /readyz)."""

    enabled: bool
    reason: str | None = None
    uids: tuple[int, int] | None = None  # first and last uid of the block held

    def describe(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"enabled": self.enabled}
        if self.reason:
            shown["reason"] = self.reason
        if self.uids:
            shown["uids"] = f"{self.uids[0]}-{self.uids[1]}"
        return shown


def _true_program() -> str:
    return shutil.which("true", path=SAFE_PATH) or "/bin/true"


def _no_new_privs() -> Callable[[], None]:
    """prctl(PR_SET_NO_NEW_PRIVS) for the child: looked up now, not after fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def set_flag() -> None:
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)

    return set_flag


def _kill_everything_of_my_uid() -> None:
    """Runs in the helper child after it became the run's uid: every process of that uid
    but itself gets SIGKILL (nothing else: it has no privilege left)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class _Process:
    pid: int
    uid: int
    ppid: int
    zombie: bool


def processes_of(uid: int | range, proc: str = "/proc") -> list[_Process]:
    """Processes whose real uid is ``uid`` (or in it), from /proc/*/status (whose Uid line
    is right even for a process that made itself non-dumpable)."""
    uids = uid if isinstance(uid, range) else range(uid, uid + 1)
    found = []
    with os.scandir(proc) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{proc}/{entry.name}/status", "rb") as handle:
                    status = handle.read(4096)
            except OSError:
                continue  # gone meanwhile
            fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
            try:
                real_uid = int(fields[b"Uid"].split()[0])
                ppid = int(fields[b"PPid"].strip())
            except (KeyError, ValueError, IndexError):
                continue
            if real_uid in uids:
                zombie = fields.get(b"State", b"").strip().startswith((b"Z", b"X"))
                found.append(_Process(int(entry.name), real_uid, ppid, zombie))
    return found


def live_processes_of(uid: int) -> list[int]:
    """The uid's processes that still run; zombies that are the worker's own children
    (it is PID 1 in a container, or their parent) are reaped on the way."""
    alive = []
    me = os.getpid()
    for process in processes_of(uid):
        if not process.zombie:
            alive.append(process.pid)
        elif process.ppid == me:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(process.pid, os.WNOHANG)
    return alive


def remove_files_of(uid: int, directories: Sequence[str]) -> int:
    """Remove the entries ``uid`` owns at the top of shared writable directories (the
    run's private directory among them): a later run of the same uid must not find them."""
    removed = 0
    for directory in dict.fromkeys(directories):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_uid != uid:
                continue
            try:
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(entry.path)  # fd-based on Linux: follows no symlink
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.warning("could not remove %s left by uid %d: %s", entry.path, uid, exc)
    return removed


class UidBlockLock:
    """One lock file per uid in a root-only directory, each held with flock() while the
    worker lives (released by the kernel when it dies): blocks of other workers are seen
    whatever their base and size, and flock locks belong to one open file, so even two
    workers in one process do not share a block."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or os.path.join(tempfile.gettempdir(),
                                                   f"jobsched-{os.geteuid()}")
        self._held: list[int] = []

    def _check_directory(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        info = os.lstat(self.directory)
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & 0o022):
            raise SandboxError(f"{self.directory} is not a directory of this user's that "
                               "only it may write: cannot keep the uid locks there")

    def _lock_one(self, uid: int) -> int | None:
        path = os.path.join(self.directory, f"uid-{uid}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def try_lock(self, first: int, count: int) -> bool:
        """All of first..first+count-1, or none of them."""
        self._check_directory()
        taken: list[int] = []
        for uid in range(first, first + count):
            fd = self._lock_one(uid)
            if fd is None:
                for held in taken:
                    os.close(held)
                return False
            taken.append(fd)
        self.close()
        self._held = taken
        return True

    def close(self) -> None:
        for fd in self._held:
            os.close(fd)
        self._held = []


def _unassigned(first: int, count: int) -> str | None:
    """Why the uids (and gids) first..first+count-1 cannot be used, or None."""
    for number in range(first, first + count):
        try:
            return f"uid {number} belongs to user {pwd.getpwuid(number).pw_name!r}"
        except KeyError:
            pass
        try:
            return f"gid {number} belongs to group {grp.getgrgid(number).gr_name!r}"
        except KeyError:
            pass
    return None


class ShellSandbox:
    def __init__(self, uid_base: int = 60_000, slots: int = 64, cpu_s: int = 0,
                 memory_bytes: int = 0, open_files: int = 0, file_size_bytes: int = 0,
                 max_processes: int = 0, work_root: str | None = None,
                 lock_directory: str | None = None) -> None:
        self.uid_base = uid_base
        self.slots = slots
        self.cpu_s = cpu_s
        self.memory_bytes = memory_bytes
        self.open_files = open_files
        self.file_size_bytes = file_size_bytes
        self.max_processes = max_processes
        self.work_root = work_root
        self.status = ShellStatus(False, "not started")
        self._lock = UidBlockLock(lock_directory)
        self._free: asyncio.LifoQueue[Identity] | None = None
        self._true = _true_program()
        self._no_new_privs = _no_new_privs()
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> ShellSandbox:
        return cls(uid_base=settings.shell_uid_base, slots=settings.shell_concurrency,
                   cpu_s=settings.shell_cpu_s, memory_bytes=settings.shell_memory_bytes,
                   open_files=settings.shell_open_files,
                   file_size_bytes=settings.shell_file_size_bytes,
                   max_processes=settings.shell_max_processes,
                   work_root=settings.shell_work_root)

    # --- start-up -------------------------------------------------------------------

    def start(self) -> ShellStatus:
        """Take a block of uids, prove the switch works, and kill what a predecessor left
        running under them. Never raises: a failure is the status (shell runs refused)."""
        try:
            self.status = self._start()
        except (SandboxError, OSError, subprocess.SubprocessError) as exc:
            self.status = ShellStatus(False, str(exc))
        return self.status

    def _start(self) -> ShellStatus:
        if os.geteuid() != 0:
            raise SandboxError(
                f"the worker runs as uid {os.geteuid()}, not root, so it cannot give each "
                "shell run a uid of its own; shell runs are refused (run the worker as root "
                "or set JOBSCHED_DISABLED_KINDS=shell)")
        first = self._claim_block()
        self._probe(first)
        left = {p.uid for p in processes_of(range(first, first + self.slots)) if not p.zombie}
        for uid in sorted(left):
            log.warning("uid %d still runs processes of an earlier worker; killing them", uid)
            self._kill_uid_now(uid)
        self._free = asyncio.LifoQueue()
        for uid in reversed(range(first, first + self.slots)):
            self._free.put_nowait(Identity(uid, uid))
        return ShellStatus(True, uids=(first, first + self.slots - 1))

    def _claim_block(self) -> int:
        reasons = []
        for index in range(max(MAX_BLOCKS, MAX_UIDS // self.slots)):
            first = self.uid_base + index * self.slots
            if first + self.slots - 1 > 2**31 - 2:
                break
            taken = _unassigned(first, self.slots)
            if taken is not None:
                reasons.append(taken)
                continue
            if self._lock.try_lock(first, self.slots):
                return first
        why = f" ({'; '.join(reasons[:2])})" if reasons else ""
        raise SandboxError(f"no free block of {self.slots} uids from shell_uid_base="
                           f"{self.uid_base} on: other workers on this host hold them or "
                           f"users own them{why}")

    def _probe(self, uid: int) -> None:
        try:
            subprocess.run([self._true], user=uid, group=uid, extra_groups=[],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=10, check=True,
                           preexec_fn=self._no_new_privs)
        except OSError as exc:
            raise SandboxError(f"the worker cannot switch to uid {uid} ({exc.strerror}: it "
                               "needs CAP_SETUID and CAP_SETGID, and the uid mapped in its "
                               "user namespace); shell runs are refused (or set "
                               "JOBSCHED_DISABLED_KINDS=shell)") from None

    def _kill_uid_now(self, uid: int) -> None:
        subprocess.run([self._true], user=uid, group=uid, extra_groups=[],
                       preexec_fn=_kill_everything_of_my_uid, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                       check=False)

    async def aclose(self) -> None:
        """Let the ends of runs finish (their kills and clean-up), then give up the uids."""
        if self._cleanups:
            _, pending = await asyncio.wait(set(self._cleanups), timeout=KILL_WAIT_S + 5)
            for task in pending:  # set-aside slots: the next worker kills what is left
                task.cancel()
        self.close()

    def close(self) -> None:
        self._lock.close()

    # --- one run ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run_slot(self) -> AsyncIterator[tuple[Identity, str]]:
        """A free uid and a fresh private directory for one run; when the run ends (however
        it ends, cancellation too) everything of the uid is killed and its files removed
        before the uid serves another run."""
        if not self.status.enabled or self._free is None:
            raise SandboxError(f"shell runs are refused on this worker: {self.status.reason}")
        identity = await self._free.get()
        try:
            home = self._make_workdir(identity)
        except OSError as exc:
            self._free.put_nowait(identity)
            raise SandboxError(f"cannot make the run's private directory: {exc}") from None
        try:
            yield identity, home
        finally:
            # Shielded: a second cancellation (the drain giving up) must not leave the
            # run's processes alive or lose the slot.
            await asyncio.shield(self._track(self._end_run(identity, home)))

    async def kill_run(self, identity: Identity) -> bool:
        """SIGKILL to every process of the run's uid, from a helper that is that uid;
        False if none was alive (then none can appear: only a live process of the uid
        could start one)."""
        if not await asyncio.to_thread(live_processes_of, identity.uid):
            return False
        # subprocess.run on a thread of the loop's default executor: uvloop's subprocesses
        # take no user or group, and a fork in the loop would stall it (shell.py forks the
        # runs themselves in a thread of their own for that reason; a kill is rare, and is
        # not queued behind runs starting there).
        await asyncio.to_thread(
            subprocess.run, [self._true], user=identity.uid, group=identity.gid,
            extra_groups=[], preexec_fn=_kill_everything_of_my_uid, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        return True

    async def _end_run(self, identity: Identity, home: str) -> None:
        """Kill everything of the run's uid and clear its files; the slot goes back to the
        pool only once nothing of the uid is alive. A survivor that will not die in
        KILL_WAIT_S (uninterruptible I/O) sets the slot aside, in the background: the run's
        result is recorded meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT_S
        try:
            while await self.kill_run(identity):
                if loop.time() > deadline:
                    log.warning("uid %d still has processes %.0fs after its run ended; its "
                                "slot is set aside until they are gone", identity.uid,
                                KILL_WAIT_S)
                    self._track(self._set_aside(identity, home))
                    return
                await asyncio.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - e.g. no fork possible now: try again later
            log.warning("ending the processes of uid %d failed (%r); its slot is set aside",
                        identity.uid, exc)
            self._track(self._set_aside(identity, home))
            return
        await self._release(identity, home)

    async def _set_aside(self, identity: Identity, home: str) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if not await self.kill_run(identity):
                    break
            except Exception as exc:  # noqa: BLE001 - keep trying: the slot must stay out
                log.warning("ending the processes of uid %d failed (%r)", identity.uid, exc)
        log.info("uid %d has no process left; its slot is back", identity.uid)
        await self._release(identity, home)

    async def _release(self, identity: Identity, home: str) -> None:
        assert self._free is not None
        await asyncio.to_thread(self._remove_files, identity, home)
        self._free.put_nowait(identity)

    def _track(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    def _remove_files(self, identity: Identity, home: str) -> None:
        shutil.rmtree(home, ignore_errors=True)
        roots = [tempfile.gettempdir(), *SHARED_TMP_DIRS]
        if self.work_root:
            roots.append(self.work_root)
        remove_files_of(identity.uid, tuple(roots))

    def _make_workdir(self, identity: Identity) -> str:
        """A fresh directory only the run's uid can enter."""
        path = tempfile.mkdtemp(prefix="jobsched-run-", dir=self.work_root)
        os.chown(path, identity.uid, identity.gid)
        os.chmod(path, 0o700)
        return path

    # --- what the child gets ------------------------------------------------------------

    def limits(self) -> list[tuple[int, tuple[int, int]]]:
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
        if self.max_processes:
            # Counted per uid: each run has its own, so this is the run's own limit.
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
        return {"PATH": SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
                **job_env}

    def child_setup(self, cwd: str | None) -> Callable[[], None]:
        return child_setup(self.limits(), cwd, self._no_new_privs)


def child_setup(limits: list[tuple[int, tuple[int, int]]], cwd: str | None,
                no_new_privs: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """What the child runs between fork and exec, after it has switched to the run's uid:
    only system calls, so it is safe in a forked copy of a threaded process."""
    encoded_cwd = os.fsencode(cwd) if cwd else None
    message = b"jobsched: cannot enter cwd: "

    def setup() -> None:
        no_new_privs()
        for which, values in limits:
            resource.setrlimit(which, values)
        if encoded_cwd is not None:
            try:
                os.chdir(encoded_cwd)  # as the run's uid: its own permissions apply
            except OSError as exc:
                os.write(2, message + os.fsencode(exc.strerror or "error") + b"\n")
                os._exit(CWD_FAILED_EXIT)

    return setup
