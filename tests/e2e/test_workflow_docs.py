"""docs/workflows.md's example runs as written: its task module imported by a real worker,
the workflow defined in Python and run through a real api, and the same workflow as YAML
through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(120)

DOC = ROOT / "docs" / "workflows.md"


def doc_files() -> dict[str, str]:
    """The code blocks of the doc whose first line names a file (``# etl_tasks.py``)."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", DOC.read_text(), re.S)
    return {name: body for name, body in blocks}


def test_the_documented_example_runs(local_cluster: LocalCluster, tmp_path: Path) -> None:
    files = doc_files()
    assert set(files) == {"etl_tasks.py", "run_etl.py", "etl.yaml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    local_cluster.start("scheduler")
    local_cluster.start("worker", extra=("--import", "etl_tasks"), PYTHONPATH=path)
    local_cluster.start("api")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=local_cluster.api, JOBSCHED_TOKEN=local_cluster.token,
               PYTHONPATH=path)

    ran = subprocess.run([sys.executable, "run_etl.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=90)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "succeeded 2026-11-27: warmest Cairo of 3 cities"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jobsched", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    created = cli("workflows", "create", "-f", str(tmp_path / "etl.yaml"), "-o", "json")
    assert created.returncode == 0, created.stderr
    workflow = json.loads(created.stdout)
    watched = cli("workflows", "run", workflow["id"], "--watch", "--input",
                  '{"day": "2026-11-28", "readings": [["Oslo", 4], ["Lima", 19]]}')
    assert watched.returncode == 0, (watched.stdout, watched.stderr)
    assert "report" in watched.stdout and watched.stdout.rstrip().endswith("succeeded")
