"""``jobsched run --import`` from a project directory, as the installed script runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobsched_dev.processes import free_port
from tests.helpers import ROOT


def _jobsched(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``python -P -m jobsched``: -P keeps the current directory off sys.path, as the
    ``jobsched`` console script does (plain ``python -m`` would put it there and hide
    the problem)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBSCHED_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               JOBSCHED_API_PORT=str(free_port()), JOBSCHED_METRICS_PORT=str(free_port()),
               JOBSCHED_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/jobsched_absent")
    return subprocess.Popen([sys.executable, "-P", "-m", "jobsched", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_run_imports_task_modules_from_the_current_directory(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    marker = tmp_path / "imported"
    (package / "tasks.py").write_text(
        "from pathlib import Path\n"
        "from jobsched import task\n"
        f"Path({str(marker)!r}).write_text('yes')\n"
        "@task\n"
        "def report() -> None: ...\n")
    process = _jobsched(tmp_path, "run", "--role", "all", "--import", "myapp.tasks")
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "myapp.tasks was not imported"
        assert process.poll() is None, "the role process exited after importing"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert "No module named" not in output


def test_a_task_module_not_found_says_where_it_was_looked_for(tmp_path: Path) -> None:
    process = _jobsched(tmp_path, "run", "--role", "all", "--import", "myapp.tasks")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    last = output.strip().splitlines()[-1]
    assert "no module named 'myapp'" in last
    assert f"current directory ({tmp_path})" in last
    assert "PYTHONPATH" in last
    assert "Traceback" not in output
