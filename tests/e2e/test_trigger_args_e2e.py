"""``jobs trigger --arg``: one run with other arguments, the job unchanged; and the
``jobs create`` options for policies and the idempotency key, against a real cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(90)


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=cluster.api, JOBSCHED_TOKEN=cluster.token)
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_trigger_with_args_runs_once_with_them(local_cluster: LocalCluster) -> None:
    local_cluster.start("all", extra=("--import", "examples.tasks"))
    job = json.loads(_ok(_cli(local_cluster, "jobs", "create", "-o", "json", "--name", "r",
                              "-s", "0 0 1 1 *", "--python", "examples.tasks:report",
                              "--arg", "team=billing", "--concurrency", "forbid",
                              "--misfire", "skip", "--max-attempts", "2",
                              "--idempotency-key", "report-v1")))
    assert (job["concurrency"], job["misfire"], job["retry"]["max_attempts"]) == \
        ("forbid", "skip", 2)
    again = json.loads(_ok(_cli(local_cluster, "jobs", "create", "-o", "json", "--name", "r",
                                "-s", "0 0 1 1 *", "--python", "examples.tasks:report",
                                "--arg", "team=billing", "--concurrency", "forbid",
                                "--misfire", "skip", "--max-attempts", "2",
                                "--idempotency-key", "report-v1")))
    assert again["id"] == job["id"], "the same key and body answer the first job"

    out = _ok(_cli(local_cluster, "jobs", "trigger", job["id"], "--arg", "team=ops",
                   "--arg", "count=3", "--watch"))
    assert '{"team":"ops","count":3}' in out
    run_id = re.search(r"triggered execution (\S+)", out)
    assert run_id
    execution = json.loads(_ok(_cli(local_cluster, "executions", "get", run_id.group(1),
                                    "-o", "json")))
    assert execution["args"] == {"team": "ops", "count": 3}

    out = _ok(_cli(local_cluster, "jobs", "trigger", job["id"], "--watch"))
    assert '{"team":"billing","count":1}' in out, "the job's own args are unchanged"
    stored = json.loads(_ok(_cli(local_cluster, "jobs", "get", job["id"], "-o", "json")))
    assert stored["python"]["args"] == {"team": "billing"}


def test_trigger_args_of_a_job_that_is_not_python_are_refused(
        local_cluster: LocalCluster) -> None:
    local_cluster.start("api")
    created = _ok(_cli(local_cluster, "jobs", "create", "-y", "--name", "s", "-s", "0 0 1 1 *",
                       "--", "/bin/true"))
    job_id = re.search(r"created job (\S+)", created)
    assert job_id
    refused = _cli(local_cluster, "jobs", "trigger", job_id.group(1), "--arg", "x=1")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert refused.stderr.strip() == ("jobsched: 422 Invalid trigger: args: only a python job "
                                      "takes args; this one is shell")
