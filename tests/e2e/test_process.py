"""The binary itself: start-up with --migrate, config errors, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from jobsched.adapters.postgres import create_database
from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT, db_url, drop_database

pytestmark = pytest.mark.timeout(90)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env={**clean, **env}, cwd=ROOT, timeout=30)


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("jobsched 0.")


@pytest.mark.parametrize(("env", "flags", "key"), [
    ({"JOBSCHED_API_PORT": "eighty"}, (), "api_port (JOBSCHED_API_PORT)"),
    ({"JOBSCHED_CLUSTER": "Has Spaces"}, (), "cluster (JOBSCHED_CLUSTER)"),
    ({"JOBSCHED_DATABASE_URL": "mysql://x"}, (), "database_url (JOBSCHED_DATABASE_URL)"),
    ({}, ("--api-port", "70000"), "api_port"),
    ({"JOBSCHED_ZOOKEEPER_HOSTS": "nohost"}, (), "zookeeper_hosts"),
])
def test_invalid_config_stops_with_one_line(env: dict[str, str], flags: tuple[str, ...],
                                            key: str) -> None:
    result = run_cli("run", "--role", "api", *flags, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


def test_invalid_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[jobsched]\nworker_prefetch = 0\ncolour = "red"\n')
    result = run_cli("run", "--role", "worker", JOBSCHED_CONFIG=str(config))
    assert result.returncode == 2
    assert "worker_prefetch" in result.stderr or "colour" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_import_is_a_clear_error() -> None:
    result = run_cli("run", "--role", "worker", "--import", "no_such_module_here")
    assert result.returncode == 2
    assert "no_such_module_here" in result.stderr


async def test_migrate_creates_the_database_and_is_idempotent() -> None:
    name = f"jobsched_empty_{uuid.uuid4().hex[:8]}"
    try:
        first = run_cli("migrate", "--create-db", "--database-url", db_url(name))
        assert first.returncode == 0, first.stderr
        assert "created the database" in first.stdout
        assert "migration(s): 001_init.sql, 002_" in first.stdout
        again = run_cli("migrate", JOBSCHED_DATABASE_URL=db_url(name))
        assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout
    finally:
        await drop_database(name)


def test_migrate_without_a_server_is_one_clear_line() -> None:
    result = run_cli("migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/x")
    assert result.returncode == 1
    assert result.stderr.startswith("jobsched: cannot reach PostgreSQL")


async def test_run_with_migrate_on_an_empty_database(local_cluster: LocalCluster) -> None:
    await drop_database(local_cluster.database)
    await create_database(local_cluster.database_url)  # empty: no schema at all
    proc = local_cluster.start("all", extra=("--migrate", "--import", "sample_tasks"))
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        job = await api.create({"name": "m", "schedule": "immediate", "kind": "python",
                                "python": {"function": "sample_tasks:add",
                                           "args": {"a": 1, "b": 1}}})
        execution = await api.wait_terminal(job["id"])
        assert execution["state"] == "succeeded" and execution["output"] == '{"sum":2}'
    assert proc.terminate() == 0


async def test_sigterm_drains_running_work_and_exits_zero(local_cluster: LocalCluster) -> None:
    local_cluster.start("scheduler")
    worker = local_cluster.start("worker")
    local_cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        job = await api.create({"name": "slow", "schedule": "immediate", "kind": "shell",
                                "shell": {"argv": ["/bin/sh", "-c", "sleep 1.5; echo done"]}})
        for _ in range(100):
            items = await api.executions(job["id"])
            if items and items[0]["state"] == "running":
                break
            await asyncio.sleep(0.05)
        assert items[0]["state"] == "running"
        assert worker.terminate() == 0  # waits for the run to finish, records it, exits 0
        execution = await api.execution(items[0]["id"])
        assert execution["state"] == "succeeded" and execution["output"] == "done\n"
    for proc in local_cluster.processes:
        assert proc.terminate() == 0


async def test_shell_runs_are_limited_by_shell_concurrency(local_cluster: LocalCluster) -> None:
    """shell_concurrency=1: two shell jobs due together run one after the other, while a
    python run is not held behind them (worker_concurrency is the limit for it)."""
    local_cluster.start("scheduler")
    local_cluster.start("worker", extra=("--import", "sample_tasks"),
                        JOBSCHED_SHELL_CONCURRENCY="1")
    local_cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        shell = {"kind": "shell", "schedule": "immediate",
                 "shell": {"argv": ["/bin/sh", "-c", "sleep 1"]}}
        jobs = [await api.create({"name": f"slow-{i}", **shell}) for i in range(2)]
        quick = await api.create({"name": "quick", "schedule": "immediate", "kind": "python",
                                  "python": {"function": "sample_tasks:add",
                                             "args": {"a": 1, "b": 2}}})
        runs = [await api.wait_terminal(job["id"], timeout=20) for job in jobs]
        fast = await api.wait_terminal(quick["id"], timeout=20)
    assert [r["state"] for r in runs] == ["succeeded", "succeeded"], [
        (r["state"], r.get("error"), r.get("output")) for r in runs]

    def at(run: dict[str, str], key: str) -> datetime:
        return datetime.fromisoformat(run[key])

    first, second = sorted(runs, key=lambda r: at(r, "started_at"))
    # Never both at once: the second starts when the first's 1 s process has ended (its
    # finished_at is when its result was recorded, a few ms later still).
    assert at(second, "started_at") - at(first, "started_at") >= timedelta(seconds=0.95)
    assert fast["state"] == "succeeded"
    assert at(fast, "finished_at") < at(second, "finished_at")
