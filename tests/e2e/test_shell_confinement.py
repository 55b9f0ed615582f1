"""Shell jobs run confined: a uid of the run's own, a clean environment, a private
directory removed afterwards, resource limits, and nothing of the run left once it ends.
The worker runs as root, as it would in a container, so that dropping privileges is real.
The attacks of issue 13 are reproduced here: a survivor of its run (setsid, double fork,
nohup), a later run reading an earlier run's /proc/*/environ, a run reading the worker's."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import RoleProcess, free_port
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.helpers import ROOT

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root"),
]

MEMORY_LIMIT = 256 << 20
SYSTEM_PYTHON = "/usr/bin/python3"
RUN_SECRET = "run-secret-" + secrets.token_hex(12)
WORKER_CANARY = "worker-only-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def confined_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                     template_db: str) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("confined")
    secrets_dir = tmp / "secrets"
    (secrets_dir / "default").mkdir(parents=True)
    (secrets_dir / "default" / "RUN_SECRET").write_text(RUN_SECRET)
    secrets_dir.chmod(0o700)
    cluster = _new_cluster(tmp, zookeeper, template_db)
    cluster.start("scheduler")
    # Two slots: runs one after another take the same uid (the strongest case for a
    # later run reading an earlier one), runs at the same time take different ones.
    cluster.start("worker", JOBSCHED_SHELL_MEMORY_BYTES=str(MEMORY_LIMIT),
                  JOBSCHED_SHELL_CPU_S="2", JOBSCHED_SHELL_CONCURRENCY="2",
                  JOBSCHED_SECRETS_DIR=str(secrets_dir), JOBSCHED_CANARY=WORKER_CANARY)
    cluster.start("api")
    yield cluster
    _teardown(cluster)


def shell_report(process: RoleProcess) -> dict[str, Any]:
    """The "shell" entry of a worker's /readyz, once the worker has set its sandbox up (the
    entry shows "not started" from the role's registration until then)."""
    deadline = time.monotonic() + 10
    while True:
        _, report = process.readyz()
        shell = report.get("shell")
        started = isinstance(shell, dict) and shell.get("reason") != "not started"
        if started or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def worker_uids(cluster: LocalCluster) -> range:
    """The worker's block of uids, as its /readyz shows it."""
    worker = next(p for p in cluster.processes if p.roles == ("worker",))
    report = shell_report(worker)
    assert report["shell"]["enabled"], report
    first, last = (int(n) for n in report["shell"]["uids"].split("-"))
    return range(first, last + 1)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(confined_cluster: LocalCluster, session: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(session, confined_cluster.api, token=confined_cluster.token)


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    """A directory anyone may enter, holding a root-only file and a public one."""
    folder = Path(tempfile.mkdtemp(prefix="jobsched-confine-"))
    folder.chmod(0o755)
    private = folder / "private.txt"
    private.write_text("root only\n")
    private.chmod(0o600)
    public = folder / "public.txt"
    public.write_text("anyone\n")
    public.chmod(0o644)
    yield folder
    shutil.rmtree(folder)


async def run(api: ApiClient, argv: list[str], **shell: Any) -> dict[str, Any]:
    job = await api.create({"name": "confined", "schedule": "immediate", "kind": "shell",
                            "timeout_s": 30, "shell": {"argv": argv, **shell}})
    return await api.wait_terminal(job["id"], timeout=40)


async def test_cannot_read_a_root_only_file(api: ApiClient, files: Path) -> None:
    private, public = await asyncio.gather(
        run(api, ["cat", str(files / "private.txt")]),
        run(api, ["cat", str(files / "public.txt")]))
    assert private["state"] == "dead" and "Permission denied" in private["output"], private
    assert public["state"] == "succeeded" and public["output"] == "anyone\n"  # the control


async def test_runs_as_a_uid_of_its_own_with_a_clean_environment(
        api: ApiClient, confined_cluster: LocalCluster) -> None:
    who, env = await asyncio.gather(
        run(api, ["/bin/sh", "-c", "id -u; id -g; id -G"]),
        run(api, ["/usr/bin/env"], env={"JOB_VAR": "mine"}))
    uid, gid, groups = who["output"].split()
    assert int(uid) in worker_uids(confined_cluster) and gid == uid and groups == uid
    variables = dict(line.split("=", 1) for line in env["output"].splitlines())
    assert set(variables) == {"PATH", "HOME", "TMPDIR", "LANG", "JOB_VAR"}, variables
    assert variables["JOB_VAR"] == "mine" and variables["LANG"] == "C.UTF-8"
    assert variables["HOME"].startswith(tempfile.gettempdir() + "/jobsched-run-")
    assert variables["TMPDIR"] == variables["HOME"]


async def test_a_private_directory_removed_afterwards(api: ApiClient) -> None:
    result = await run(api, ["/bin/sh", "-c", 'pwd; touch made-here; stat -c "%u %a" .; '
                                              "id -u"])
    assert result["state"] == "succeeded", result
    where, owner, uid = result["output"].splitlines()
    assert owner == f"{uid} 700"
    assert where.startswith(tempfile.gettempdir() + "/jobsched-run-")
    assert not os.path.exists(where)  # noqa: ASYNC240 - one stat, once


async def test_cwd_is_entered_as_the_job_user(api: ApiClient, files: Path) -> None:
    allowed, refused = await asyncio.gather(
        run(api, ["pwd"], cwd=str(files)),
        run(api, ["pwd"], cwd="/root"))
    assert allowed["output"] == f"{files}\n"
    assert refused["state"] == "dead" and refused["exit_code"] == 126
    assert "cannot enter cwd: Permission denied" in refused["output"]


async def test_killed_at_its_memory_limit(api: ApiClient) -> None:
    allocate = "bytearray({} << 20); print('allocated')"
    big, small = await asyncio.gather(
        run(api, [SYSTEM_PYTHON, "-c", allocate.format(512)]),
        run(api, [SYSTEM_PYTHON, "-c", allocate.format(32)]))
    assert big["state"] == "dead", big
    assert "MemoryError" in big["output"] and "allocated" not in big["output"]
    assert small["state"] == "succeeded" and small["output"] == "allocated\n"  # the control


async def test_killed_at_its_cpu_limit(api: ApiClient) -> None:
    started = time.monotonic()
    spin = await run(api, ["/bin/sh", "-c", "while :; do :; done"])
    assert spin["state"] == "dead", spin
    assert "SIGXCPU" in spin["error"] and "shell_cpu_s=2" in spin["error"]
    assert time.monotonic() - started < 20  # long before its 30 s timeout


async def test_open_files_and_processes_are_limited(api: ApiClient) -> None:
    result = await run(api, ["/bin/sh", "-c", "ulimit -n; ulimit -p; ulimit -c"])
    assert result["output"].split() == ["256", "512", "0"]


def survivors(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("escape", [
    "sleep 60 >/dev/null 2>&1 &",
    "setsid sh -c 'sleep 300; : {m}' &",
    "(sh -c 'sleep 300; : {m}' >/dev/null 2>&1 &)",
    "nohup sh -c 'sleep 300; : {m}' >/dev/null 2>&1 &",
], ids=["background", "setsid", "double fork", "nohup"])
async def test_nothing_it_started_outlives_it(api: ApiClient, escape: str) -> None:
    marker = "jobsched-e2e-" + secrets.token_hex(8)
    result = await run(api, ["/bin/sh", "-c",
                             escape.format(m=marker) + "\nsleep 0.3\necho $$ started"])
    assert result["state"] == "succeeded" and "started" in result["output"], result
    assert survivors(marker) == [], f"{escape!r} outlived its run"


async def test_a_later_run_cannot_read_an_earlier_runs_environment(api: ApiClient) -> None:
    """Run 1 holds a secret in its environment and leaves a process behind; run 2, on the
    same uid, reads every /proc/*/environ it can (base64: no masking can hide a value)."""
    first = await run(api, ["/bin/sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &\nid -u"],
                      env={"TOKEN": {"secret": "RUN_SECRET"}})
    assert first["state"] == "succeeded", first
    second = await run(api, ["/bin/sh", "-c",
                             "id -u; cat /proc/[0-9]*/environ 2>/dev/null | base64 -w0"])
    uid, dump = second["output"].split("\n", 1)
    assert uid == first["output"].strip(), "both runs must have had the same uid"
    seen = base64.b64decode(dump.strip())
    assert b"HOME=" in seen  # the control: it does read its own environment
    assert RUN_SECRET.encode() not in seen


async def test_a_run_cannot_read_the_workers_environment(api: ApiClient) -> None:
    result = await run(api, ["/bin/sh", "-c", "cat /proc/$PPID/environ; "
                                              "cat /proc/$PPID/cmdline | tr '\\0' ' '; "
                                              "env | base64 -w0"])
    output = result["output"]
    assert "/proc/" in output and "Permission denied" in output, result
    assert "jobsched" in output  # the control: $PPID is the worker
    assert WORKER_CANARY not in output and "JOBSCHED_" not in output.split()[-1]
    assert WORKER_CANARY.encode() not in base64.b64decode(output.split()[-1])


class CapabilityDroppedWorker(RoleProcess):
    """A root worker without CAP_SETUID and CAP_SETGID: root in name, unable to switch."""

    def command(self) -> list[str]:
        return ["setpriv", "--bounding-set=-setuid,-setgid", *super().command()]


async def test_a_worker_that_cannot_switch_uid_refuses_shell_runs(
        local_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    local_cluster.start("scheduler")
    port = free_port()
    worker = CapabilityDroppedWorker(
        "no-setuid", ("worker",), port,
        local_cluster.env(JOBSCHED_METRICS_PORT=str(port), JOBSCHED_INSTANCE="no-setuid"),
        local_cluster.tmp / "no-setuid.log", cwd=ROOT)
    local_cluster.processes.append(worker.start())
    await asyncio.to_thread(worker.wait_ready)
    report = await asyncio.to_thread(shell_report, worker)
    assert report["shell"]["enabled"] is False
    assert "cannot switch to uid" in report["shell"]["reason"], report
    local_cluster.start("api")
    api = ApiClient(session, local_cluster.api, token=local_cluster.token)
    result = await run(api, ["/bin/true"])
    assert result["state"] == "dead", result
    assert result["error"].startswith("shell runs are refused on this worker: the worker "
                                      "cannot switch to uid "), result
    log = worker.log_path.read_text()
    assert len(re.findall(r"WARNING .*shell runs are refused", log)) == 1, log
    quiet = local_cluster.start("worker", JOBSCHED_DISABLED_KINDS="shell")
    report = await asyncio.to_thread(shell_report, quiet)
    assert report["shell"] == {"enabled": False,
                               "reason": "shell jobs are disabled (disabled_kinds)"}
    assert "shell runs are refused" not in quiet.log_path.read_text()
