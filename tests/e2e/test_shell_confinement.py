"""Shell jobs run confined: an unprivileged user, a clean environment, a private directory
removed afterwards, and resource limits. The worker runs as root, as it would in a
container, so that dropping privileges is real."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root"),
]

MEMORY_LIMIT = 256 << 20
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def confined_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                     template_db: str) -> Iterator[LocalCluster]:
    cluster = _new_cluster(tmp_path_factory.mktemp("confined"), zookeeper, template_db)
    cluster.start("scheduler")
    cluster.start("worker", JOBSCHED_SHELL_MEMORY_BYTES=str(MEMORY_LIMIT),
                  JOBSCHED_SHELL_CPU_S="2")
    cluster.start("api")
    yield cluster
    _teardown(cluster)


@pytest.fixture
async def api(confined_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, confined_cluster.api, token=confined_cluster.token)


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


async def test_runs_as_nobody_with_a_clean_environment(api: ApiClient) -> None:
    who, env = await asyncio.gather(
        run(api, ["id", "-un"]),
        run(api, ["/usr/bin/env"], env={"JOB_VAR": "mine"}))
    assert who["output"] == "nobody\n"
    variables = dict(line.split("=", 1) for line in env["output"].splitlines())
    assert set(variables) == {"PATH", "HOME", "LANG", "JOB_VAR"}, variables
    assert variables["JOB_VAR"] == "mine" and variables["LANG"] == "C.UTF-8"
    assert variables["HOME"].startswith(tempfile.gettempdir() + "/jobsched-run-")


async def test_a_private_directory_removed_afterwards(api: ApiClient) -> None:
    result = await run(api, ["/bin/sh", "-c", 'pwd; touch made-here; stat -c "%U %a" .'])
    assert result["state"] == "succeeded", result
    where, owner = result["output"].splitlines()
    assert owner == "nobody 700"
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


async def test_nothing_it_started_outlives_it(api: ApiClient) -> None:
    result = await run(api, ["/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
    assert result["state"] == "succeeded", result
    pid = int(result["output"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"background process {pid} still runs")
