"""Shell runs are contained, on real processes (the worker's run_shell, no services): a uid
of the run's own, and when the run ends, however it ends, nothing it started survives,
whatever it did to escape (setsid, double fork, nohup); no later or concurrent run reads
its environment, nor the worker's. Needs root, as a worker that runs shell jobs does."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobsched.domain.states import AttemptOutcome
from jobsched.worker import shell as shell_module
from jobsched.worker.results import AttemptResult
from jobsched.worker.sandbox import ShellSandbox, processes_of
from jobsched.worker.secrets import RunSecrets
from jobsched.worker.shell import run_shell

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="a uid per run needs a root worker"),
]


def _base() -> int:
    """A block of uids no other test run on this machine is likely to use at once (the
    sandbox's own locks would catch it anyway)."""
    return random.randrange(3_000_000, 1_000_000_000, 4096)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[ShellSandbox]:
    box = ShellSandbox(uid_base=_base(), slots=2, lock_directory=str(tmp_path / "locks"))
    status = box.start()
    assert status.enabled, status
    yield box
    box.close()


def token() -> str:
    return "jobsched-test-" + secrets.token_hex(8)


def survivors(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


async def shell(sandbox: ShellSandbox, script: str, timeout_s: float = 20,
                env: dict[str, Any] | None = None,
                run_secrets: RunSecrets | None = None) -> AttemptResult:
    payload = {"argv": ["/bin/sh", "-c", script], "env": env or {}}
    return await run_shell(payload, timeout_s, 65_536, sandbox,
                           run_secrets or RunSecrets("default", []))


ESCAPES = {
    "setsid": "setsid sh -c 'sleep 300; : {m}' >/dev/null 2>&1 &",
    "double fork": "(sh -c 'sleep 300; : {m}' >/dev/null 2>&1 &) ",
    "nohup": "nohup sh -c 'sleep 300; : {m}' >/dev/null 2>&1 &",
    "setsid keeping the pipe": "setsid sh -c 'sleep 300; : {m}' &",
}


@pytest.mark.parametrize("escape", ESCAPES.values(), ids=list(ESCAPES))
@pytest.mark.parametrize("ending", ["succeeds", "fails", "times out"])
async def test_nothing_a_run_started_survives_it(sandbox: ShellSandbox, escape: str,
                                                 ending: str) -> None:
    marker = token()
    tail = {"succeeds": "echo started", "fails": "echo started; exit 3",
            "times out": "echo started; sleep 300"}[ending]
    started = time.monotonic()
    result = await shell(sandbox, escape.format(m=marker) + "\nsleep 0.2\n" + tail,
                         timeout_s=3)
    expected = {"succeeds": AttemptOutcome.SUCCEEDED, "fails": AttemptOutcome.FAILED,
                "times out": AttemptOutcome.TIMED_OUT}[ending]
    assert result.outcome == expected, result
    assert result.output is not None and "started" in result.output
    assert survivors(marker) == [], f"{escape!r} survived a run that {ending}"
    assert time.monotonic() - started < 12


async def test_nothing_survives_a_cancelled_run(sandbox: ShellSandbox) -> None:
    marker = token()
    run = asyncio.create_task(shell(sandbox, ESCAPES["setsid"].format(m=marker)
                                    + "\nsleep 300"))
    deadline = time.monotonic() + 10
    while not survivors(marker):
        assert time.monotonic() < deadline, "the escape never started"
        await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert survivors(marker) == []


def zombie_children() -> list[int]:
    """This process's children that have exited and are not reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            found.append(int(entry))
    return found


async def test_a_run_is_forked_off_the_event_loop_and_reaped(
        sandbox: ShellSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork waits here until the loop has run: forked in the loop, it would hold the
    loop (and this test) until the 10 s wait gives up and the run fails."""
    real_popen = subprocess.Popen
    loop_ran = threading.Event()
    forked_in: list[int] = []

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        forked_in.append(threading.get_ident())
        if len(forked_in) == 1 and not loop_ran.wait(10):
            raise AssertionError("the event loop did not run while the run was forked")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(shell_module.subprocess, "Popen", popen)
    run = asyncio.create_task(shell(sandbox, "echo forked; exit 7"))
    deadline = time.monotonic() + 10
    while not forked_in:
        assert time.monotonic() < deadline, "the run was never forked"
        await asyncio.sleep(0.01)
    loop_ran.set()
    result = await run
    assert forked_in[0] != threading.get_ident()
    assert (result.outcome, result.exit_code) == (AttemptOutcome.FAILED, 7), result
    assert result.output == "forked\n"
    assert zombie_children() == []


async def test_a_later_run_of_the_same_uid_reads_no_earlier_environment(
        sandbox: ShellSandbox) -> None:
    secret = "later-run-must-not-see-" + secrets.token_hex(8)
    first = await shell(sandbox, ESCAPES["setsid"].format(m=token()) + "\nid -u",
                        env={"SECRET_VALUE": secret})
    assert first.outcome == AttemptOutcome.SUCCEEDED, first
    # Every environment this run may read, base64 so that no masking can hide a value.
    second = await shell(sandbox, "id -u; cat /proc/[0-9]*/environ 2>/dev/null | base64 -w0")
    uid, dump = (second.output or "").split("\n", 1)
    assert uid == (first.output or "").strip(), "the test needs both runs on one uid"
    seen = base64.b64decode(dump.strip() or b"")
    assert b"PATH=" in seen  # the control: it reads its own environment
    assert secret.encode() not in seen


async def test_concurrent_runs_have_their_own_uids_and_cannot_read_each_other(
        sandbox: ShellSandbox) -> None:
    secret = "concurrent-secret-" + secrets.token_hex(8)
    holder = asyncio.create_task(shell(sandbox, "id -u; sleep 3",
                                       env={"SECRET_VALUE": secret}))
    await asyncio.sleep(0.5)
    reader = await shell(sandbox, "id -u; for f in /proc/[0-9]*/environ; do "
                                  "cat $f 2>/dev/null; done | base64 -w0")
    held = await holder
    reader_uid, dump = (reader.output or "").split("\n", 1)
    assert reader_uid != (held.output or "").split("\n")[0]
    assert secret.encode() not in base64.b64decode(dump.strip() or b"")


async def test_a_run_cannot_read_the_workers_environment(sandbox: ShellSandbox,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    canary = "worker-credential-" + secrets.token_hex(8)
    monkeypatch.setenv("JOBSCHED_CANARY", canary)
    os.environ["JOBSCHED_CANARY"] = canary  # in this (the worker's) process environment
    result = await shell(sandbox, "env; cat /proc/$PPID/environ; cat /proc/1/environ; "
                                  "echo; cat /proc/$PPID/cmdline >/dev/null && echo cmdline")
    assert canary not in (result.output or "")
    assert "Permission denied" in (result.output or "")


async def test_files_a_run_leaves_in_shared_temp_directories_are_removed(
        sandbox: ShellSandbox) -> None:
    name = token()
    result = await shell(sandbox, f"echo left > /tmp/{name}; mkdir /tmp/{name}.d; "
                                  f"echo x > /tmp/{name}.d/f; echo $TMPDIR")
    assert result.outcome == AttemptOutcome.SUCCEEDED, result
    home = (result.output or "").strip()
    assert home.startswith("/tmp/jobsched-run-")
    left = [p for p in (f"/tmp/{name}", f"/tmp/{name}.d", home) if os.path.lexists(p)]  # noqa: ASYNC240 - three stats, once
    assert left == []


async def test_a_worker_kills_what_an_earlier_worker_left_on_its_uids(tmp_path: Path) -> None:
    base = _base()
    first = ShellSandbox(uid_base=base, slots=1, lock_directory=str(tmp_path))
    assert first.start().enabled
    marker = token()
    # A survivor on the block's uid, as if the earlier worker died mid-run (no clean-up).
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"setsid sh -c 'sleep 300; : {marker}' & sleep 300",
        user=base, group=base, extra_groups=[], start_new_session=True)
    await asyncio.sleep(0.3)
    assert survivors(marker)
    first.close()  # the earlier worker is gone: its lock with it
    second = ShellSandbox(uid_base=base, slots=1, lock_directory=str(tmp_path))
    try:
        assert second.start().enabled
        assert second.status.uids == (base, base)
        assert survivors(marker) == [] and not [p for p in processes_of(base)
                                                if not p.zombie]
    finally:
        second.close()
    await proc.wait()


async def test_workers_on_one_host_take_different_blocks(tmp_path: Path) -> None:
    base = _base()
    one = ShellSandbox(uid_base=base, slots=4, lock_directory=str(tmp_path))
    two = ShellSandbox(uid_base=base, slots=4, lock_directory=str(tmp_path))
    try:
        assert one.start().uids == (base, base + 3)
        assert two.start().uids == (base + 4, base + 7)
    finally:
        one.close()
        two.close()


async def test_a_worker_with_few_slots_looks_past_blocks_that_wider_workers_hold(
        tmp_path: Path) -> None:
    """Four workers of 64 shell slots hold the first 256 uids; a worker of one slot (a
    test's shell_concurrency=1 beside them) still finds a uid past them."""
    base = _base()
    wide = [ShellSandbox(uid_base=base, slots=64, lock_directory=str(tmp_path))
            for _ in range(4)]
    narrow = ShellSandbox(uid_base=base, slots=1, lock_directory=str(tmp_path))
    try:
        assert [box.start().uids for box in wide] == [
            (base + 64 * i, base + 64 * i + 63) for i in range(4)]
        status = narrow.start()
        assert status.enabled, status.reason
        assert status.uids == (base + 256, base + 256)
    finally:
        for box in (*wide, narrow):
            box.close()


async def test_a_slot_whose_uid_will_not_die_is_set_aside_not_waited_for(
        sandbox: ShellSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A survivor stuck in uninterruptible I/O cannot be killed at once: the run's result
    does not wait for it, and its uid serves no run until nothing of it is alive."""
    from jobsched.worker import sandbox as module

    monkeypatch.setattr(module, "KILL_WAIT_S", 0.2)
    stuck = {"uid": -1}
    real_kill_run = sandbox.kill_run

    async def kill_run(identity: Any) -> bool:
        if identity.uid == stuck["uid"]:
            return True  # as if a process of it were still there after every kill
        return await real_kill_run(identity)

    monkeypatch.setattr(sandbox, "kill_run", kill_run)
    first = await shell(sandbox, "id -u")
    stuck["uid"] = int((first.output or "").strip())
    started = time.monotonic()
    again = await shell(sandbox, "id -u")  # LIFO: the same uid, which now "will not die"
    assert again.outcome == AttemptOutcome.SUCCEEDED and time.monotonic() - started < 3
    others = [await shell(sandbox, "id -u") for _ in range(2)]
    assert all(int((r.output or "").strip()) != stuck["uid"] for r in others)
    stuck_uid, stuck["uid"] = stuck["uid"], -1  # the survivor is gone: the slot comes back
    deadline = time.monotonic() + 5
    while True:  # two runs at once need both slots
        both = await asyncio.gather(*(shell(sandbox, "id -u; sleep 0.3") for _ in range(2)))
        if stuck_uid in {int((r.output or "0").split()[0]) for r in both}:
            break
        assert time.monotonic() < deadline, "the set-aside slot never came back"
