"""The README's and docs/cli.md's session, and docs/client.md's schedule(), against roles
that import ``examples.tasks`` from the checkout root: their runs succeed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from examples.tasks import send_report
from jobsched import Client
from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(90)


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=cluster.api, JOBSCHED_TOKEN=cluster.token)
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


async def test_the_documented_sessions_run(local_cluster: LocalCluster) -> None:
    local_cluster.start("all", extra=("--import", "examples.tasks"))
    created = _cli(local_cluster, "jobs", "create", "--name", "nightly-report", "-s",
                   "0 9 * * *", "-z", "Europe/Berlin", "--python", "examples.tasks:report",
                   "--arg", "team=billing", "-y")
    assert created.returncode == 0, created.stderr
    job_id = re.search(r"created job (\S+) \(nightly-report\)", created.stdout)
    assert job_id, created.stdout
    watched = _cli(local_cluster, "jobs", "trigger", job_id.group(1), "--watch")
    assert watched.returncode == 0, (watched.stdout, watched.stderr)
    assert '{"team":"billing","count":1}' in watched.stdout

    async with Client(local_cluster.api, token=local_cluster.token) as client:
        job = await client.schedule(send_report, args={"team": "billing"})
        assert job["python"]["function"] == "examples.tasks:send_report"
        execution = await client.wait_first_execution(job["id"], timeout=30)
    assert execution["state"] == "succeeded", execution
    assert execution["output"] == '{"sent":"billing"}'
