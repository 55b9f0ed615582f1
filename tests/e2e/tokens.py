"""An API token for a test cluster, made the way an operator makes one."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT


def admin_token(cluster: LocalCluster, namespace: str = "default") -> str:
    """``jobsched token create`` on the cluster's database (printed once, on stdout)."""
    result = subprocess.run(
        [sys.executable, "-m", "jobsched", "token", "create", "--namespace", namespace,
         "--role", "admin", "--name", "e2e-clients"],
        env=cluster.env(), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[0]
