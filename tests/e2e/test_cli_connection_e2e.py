"""Connection options that cannot work, against a real api, as a user types them: one
line on stderr, exit 2, the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(60)
JOB = "00000000-0000-4000-8000-000000000000"


def _jobsched(*args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env["JOBSCHED_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=30)


def _one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobsched: "), result.stderr
    return lines[0]


def test_connection_options_that_cannot_work(running_cluster: LocalCluster) -> None:
    api, token = running_cluster.api, running_cluster.token
    host_port = urlsplit(api).netloc

    said = _one_line(_jobsched("jobs", "list", "--url", host_port, token=token), 2)
    assert f"did you mean http://{host_port}?" in said
    assert "the URL is empty" in _one_line(_jobsched("jobs", "list", "--url", "", token=token), 2)
    assert "names no host" in _one_line(_jobsched("jobs", "list", "--url", "http://",
                                                  token=token), 2)
    said = _one_line(_jobsched("jobs", "list", "--url", api, token=token + "\n"), 2)
    assert "the token holds a line break" in said

    said = _one_line(_jobsched("jobs", "get", JOB, "--url", f"{api}/api/v1", token=token), 2)
    assert f"answers 404 to every API route: --url (JOBSCHED_URL) is the api server's root, " \
           f"e.g. {api}," in said
    said = _one_line(_jobsched("jobs", "get", JOB, "--url", api, token=token), 3)
    assert said == f"jobsched: job {JOB} not found"
