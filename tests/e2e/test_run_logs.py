"""Run logs on a real cluster (api, scheduler, worker as processes): a python task's
prints, log lines and traceback are its run's output, not the worker's; while it runs,
the api shows its output so far, ``jobsched executions logs --watch`` (a real subprocess)
prints its lines as they come, and the dashboard's job page shows them live."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(60)

# The screenshot docs/images/dashboard-live-logs.png is this test's: it is written there only
# with JOBSCHED_UPDATE_DOC_IMAGES=1, so a test run leaves the checkout as it was.
IMAGES = (ROOT / "docs" / "images" if os.environ.get("JOBSCHED_UPDATE_DOC_IMAGES") == "1"
          else ROOT / "artifacts" / "screenshots")


def start_progress(cluster: LocalCluster, name: str, function: str = "sample_tasks:progress",
                   **args: Any) -> tuple[str, str]:
    """A one-shot job of sample_tasks:progress; its id and its execution's, once fired."""
    job = cluster.call("POST", "/api/v1/jobs", {
        "name": name, "schedule": "immediate", "kind": "python", "timeout_s": 30,
        "python": {"function": function, "args": args}})
    deadline = time.monotonic() + 10
    while True:
        items = cluster.call("GET", f"/api/v1/jobs/{job['id']}/executions")["items"]
        if items:
            return job["id"], items[0]["id"]
        assert time.monotonic() < deadline, "the job did not fire"
        time.sleep(0.1)


def execution(cluster: LocalCluster, execution_id: str) -> dict[str, Any]:
    return cluster.call("GET", f"/api/v1/executions/{execution_id}")  # type: ignore[no-any-return]


def wait_until(cluster: LocalCluster, execution_id: str, check: Any,
               timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = execution(cluster, execution_id)
        if check(found):
            return found
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {found}"
        time.sleep(0.1)


def worker_log(cluster: LocalCluster) -> str:
    (worker,) = [p for p in cluster.processes if p.hosts("worker")]
    return worker.log_path.read_text()


@pytest.fixture
def watcher(running_cluster: LocalCluster) -> Iterator[Any]:
    """Starts ``jobsched executions logs ID --watch`` as a subprocess; its stdout lines
    arrive on a queue as (time.time() of arrival, line), then None at EOF."""
    started: list[subprocess.Popen[str]] = []

    def start(execution_id: str) -> tuple[subprocess.Popen[str], queue.Queue[Any]]:
        env = {**os.environ, "JOBSCHED_URL": running_cluster.api,
               "JOBSCHED_TOKEN": running_cluster.token, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobsched", "executions", "logs", execution_id, "--watch"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        lines: queue.Queue[Any] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.put((time.time(), text))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc, lines

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_output_streams_while_the_run_goes_on(running_cluster: LocalCluster,
                                              watcher: Any) -> None:
    cluster = running_cluster
    _, execution_id = start_progress(cluster, "logs-streamed", steps=6)
    proc, lines = watcher(execution_id)

    # the api: a running attempt's output so far
    running = wait_until(cluster, execution_id, lambda e: "step 2 of 6" in (
        (e.get("attempts") or [{}])[-1].get("output") or ""))
    assert running["state"] == "running"
    attempt = running["attempts"][-1]
    assert attempt["finished_at"] is None and attempt["output"].startswith("step 1 of 6\n")

    arrived, first = lines.get(timeout=10)
    assert first == "step 1 of 6\n"
    assert proc.wait(timeout=20) == 0  # exits once the run succeeded
    printed = []
    while (item := lines.get(timeout=5)) is not None:
        printed.append(item[1])
    text = first + "".join(printed)
    final = execution(cluster, execution_id)
    assert final["state"] == "succeeded"
    # the CLI printed the first line before the run ended (the database's clock is this
    # host's: PostgreSQL runs here)
    ended = datetime.fromisoformat(final["attempts"][-1]["finished_at"]).timestamp()
    assert arrived < ended - 0.5, (arrived, ended)
    assert text == final["attempts"][-1]["output"] + "\n"  # every line, once, in order
    output_lines = final["output"].splitlines()
    assert output_lines[0::2][:6] == [f"step {n} of 6" for n in range(1, 7)]
    assert all(line.endswith(f" INFO sample_tasks.progress: logged step {n}")
               for n, line in enumerate(output_lines[1:12:2], start=1)), output_lines
    assert output_lines[-1] == '{"steps":6}'  # then the return value
    log = worker_log(cluster)
    assert "step 1 of 6" not in log and "logged step" not in log  # not the worker's output


def test_a_failed_run_keeps_its_traceback(running_cluster: LocalCluster,
                                          watcher: Any) -> None:
    cluster = running_cluster
    _, execution_id = start_progress(cluster, "logs-failed", steps=2, pause_s=0.1, fail=True)
    proc, lines = watcher(execution_id)
    assert proc.wait(timeout=20) == 5  # the run failed
    final = execution(cluster, execution_id)
    assert final["error"] == "ValueError: gave up after 2 steps"
    output = final["attempts"][-1]["output"]
    assert output.startswith("step 1 of 2\n")
    assert "Traceback (most recent call last):\n" in output
    assert output.endswith('raise ValueError(f"gave up after {steps} steps")\n'
                           "ValueError: gave up after 2 steps\n")
    printed = []
    while (item := lines.get(timeout=5)) is not None:
        printed.append(item[1])
    assert "".join(printed) == output
    assert "gave up after" not in worker_log(cluster)  # the traceback is not the worker's


def test_a_process_isolated_runs_output_streams_too(running_cluster: LocalCluster) -> None:
    """Its child's stdout and stderr (prints, log lines at the worker's level) stream."""
    cluster = running_cluster
    _, execution_id = start_progress(cluster, "logs-process", "sample_tasks:progress_in_process",
                                     steps=4, pause_s=0.6)
    running = wait_until(cluster, execution_id, lambda e: "step 1 of 4" in (
        (e.get("attempts") or [{}])[-1].get("output") or "") or e["state"] not in (
        "queued", "running"))
    assert running["state"] == "running", running
    final = wait_until(cluster, execution_id, lambda e: e["state"] not in ("queued", "running"))
    assert final["state"] == "succeeded", final
    lines = final["output"].splitlines()
    assert lines[:2] == ["step 1 of 4", lines[1]] and lines[1].endswith(
        " INFO sample_tasks.progress: logged step 1")
    assert lines[-1] == '{"steps":4}' and "step 4 of 4" in lines
    assert "step 1 of 4" not in worker_log(cluster)


@pytest.mark.skipif(os.geteuid() != 0, reason="shell runs drop to a uid of their own: root")
def test_a_shell_runs_output_streams_too(running_cluster: LocalCluster) -> None:
    cluster = running_cluster
    job = cluster.call("POST", "/api/v1/jobs", {
        "name": "logs-shell", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", "echo first; sleep 2; echo second"]}})
    deadline = time.monotonic() + 10
    while not (items := cluster.call("GET", f"/api/v1/jobs/{job['id']}/executions")["items"]):
        assert time.monotonic() < deadline, "the job did not fire"
        time.sleep(0.1)
    execution_id = items[0]["id"]
    running = wait_until(cluster, execution_id, lambda e: (e.get("attempts") or [{}])[-1].get(
        "output") == "first\n" or e["state"] not in ("queued", "running"))
    assert running["state"] == "running", running  # its first line, before it ended
    final = wait_until(cluster, execution_id, lambda e: e["state"] == "succeeded")
    assert final["output"] == final["attempts"][-1]["output"] == "first\nsecond\n"


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing")
def test_the_job_page_shows_a_running_attempts_output_live(
        running_cluster: LocalCluster, browser: Any) -> None:
    from playwright.sync_api import expect

    from tests.e2e.test_dashboard import sign_in

    cluster = running_cluster
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        sign_in(page, cluster, cluster.token)
        job_id, _ = start_progress(cluster, "nightly-import", steps=8, pause_s=0.6)
        page.goto(f"{cluster.api}/#/jobs/{job_id}")
        live = page.locator("#live-card pre.output")
        expect(live).to_contain_text("step 2 of 8")
        expect(live).to_contain_text("step 4 of 8")  # it keeps growing while it runs
        card = page.locator("#live-card .attempt").inner_text()  # one snapshot of it
        assert "step 4 of 8" in card and "running" in card and '"steps"' not in card, card
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.locator("#live-card").screenshot(path=str(IMAGES / "dashboard-live-logs.png"))
        # once it ended: no live card, and the whole output is the latest output
        expect(page.locator("#live-card")).to_be_hidden(timeout=20_000)
        expect(page.locator("#latest-output pre")).to_contain_text('step 8 of 8')
        expect(page.locator("#latest-output pre")).to_contain_text('{"steps":8}')
    finally:
        context.close()
    assert errors == [], errors
