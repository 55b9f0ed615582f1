"""What a role says about its own set-up: metrics of ``--role all`` on the metrics port,
a misspelt JOBSCHED_* variable, or a missing database."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest

from jobsched_dev.processes import RoleProcess, free_port
from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT, drop_database

pytestmark = pytest.mark.timeout(90)


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.2)


def _readyz(proc: RoleProcess) -> tuple[int, dict[str, object]]:
    try:
        return proc.readyz()
    except (OSError, ValueError):
        return 0, {}


def test_role_all_serves_metrics_on_the_metrics_port_and_names_misspelt_variables(
        local_cluster: LocalCluster) -> None:
    metrics_port = free_port()
    proc = local_cluster.start("all", JOBSCHED_METRICS_PORT=str(metrics_port),
                               JOBSCHED_RETENTON_DAYS="3")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as got:
        body = got.read().decode()
    assert "jobsched_scheduler_is_leader" in body and "jobsched_worker_inflight" in body
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as got:
        assert got.status == 200
    assert ("environment variable JOBSCHED_RETENTON_DAYS is not a jobsched setting and is "
            "ignored: did you mean JOBSCHED_RETENTION_DAYS?") in proc.log_tail(100_000)
    assert "event loop: uvloop" in proc.log_tail(100_000)  # event_loop=auto, uvloop installed


async def test_a_missing_database_is_retried_with_the_command_that_creates_it(
        local_cluster: LocalCluster) -> None:
    await drop_database(local_cluster.database)
    proc = local_cluster.start("api", wait=False)
    _until(lambda: "create it with `jobsched migrate --create-db`" in proc.log_tail(100_000),
           "the hint in the log")
    assert proc.alive, "a missing database must be waited for, not fatal"
    # Stopped before the database appears: a role that connects while the migration runs
    # refuses the half-made schema and exits (tests/e2e/test_operations.py), by design.
    proc.terminate()
    created = local_cluster.jobsched("migrate", "--create-db")
    assert created.returncode == 0, created.stderr
    proc = local_cluster.start("api", wait=False)
    _until(lambda: _readyz(proc)[0] == 200, "ready once the database exists")


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(
        local_cluster: LocalCluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = local_cluster.env(JOBSCHED_API_PORT=str(free_port()),
                                JOBSCHED_METRICS_PORT=str(port))
        done = subprocess.run([sys.executable, "-m", "jobsched", "run", "--role", "all"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jobsched: cannot listen on 127.0.0.1:{port} (health)")
    assert last.endswith("choose another port with JOBSCHED_METRICS_PORT (0 picks a free one)")
    assert "Traceback" not in done.stderr
