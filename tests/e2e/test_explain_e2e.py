"""``GET /api/v1/jobs/{id}/explain`` and ``jobsched jobs explain`` against a real cluster:
an active job due at its next fire, a paused one (no stale next fire), one ended by
max_runs, a coalesced misfire after a resume (listed with its reason, where the list puts
it), and a cluster with no worker alive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from jobsched.client import ApiError, SyncClient
from tests.e2e.conftest import LocalCluster
from tests.e2e.tokens import admin_token
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(90)

NEVER_SOON = "0 0 1 1 *"  # fires on 1 January only: the job stays put during the test


def shell_job(schedule: str, **extra: Any) -> dict[str, Any]:
    return {"name": "explain-me", "schedule": schedule, "kind": "shell",
            "shell": {"argv": ["/bin/true"]}, **extra}


def at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


@pytest.fixture
def client(running_cluster: LocalCluster, token: str) -> Iterator[SyncClient]:
    with SyncClient(running_cluster.api, token) as client:
        yield client


def cli(cluster: LocalCluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=cluster.api, JOBSCHED_TOKEN=token, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=30)


def test_an_active_job_is_due_at_its_next_fire(client: SyncClient) -> None:
    job = client.create_job(shell_job(NEVER_SOON))
    report = client.explain_job(job["id"])
    assert report["state"] == "active"
    assert report["next_fire"]["reason"] == "due"
    assert at(report["next_fire"]["at"]) == at(job["next_fire_at"])
    assert report["paused_since"] is None
    assert report["workers"]["alive"] >= 1 and report["workers"]["instances"]
    assert report["queue"]["priority"] == "normal"
    assert isinstance(report["queue"]["depth"], int)
    assert report["recent"] == []
    assert report["summary"].startswith("active: next fire at ")


def test_another_namespaces_job_is_not_found(running_cluster: LocalCluster,
                                             client: SyncClient) -> None:
    job = client.create_job(shell_job(NEVER_SOON))
    other = admin_token(running_cluster, namespace="explain-other")
    with SyncClient(running_cluster.api, other) as theirs:
        with pytest.raises(ApiError) as raised:
            theirs.explain_job(job["id"])
    assert raised.value.status == 404
    with SyncClient(running_cluster.api, "jsk_not-a-token") as nobody:
        with pytest.raises(ApiError) as raised:
            nobody.explain_job(job["id"])
    assert raised.value.status == 401


def test_a_paused_job_shows_no_stale_next_fire(running_cluster: LocalCluster,
                                              client: SyncClient, token: str) -> None:
    job = client.create_job(shell_job(NEVER_SOON))
    paused = client.pause_job(job["id"])
    assert paused["next_fire_at"] is None
    assert client.get_job(job["id"])["next_fire_at"] is None
    listed = [j for j in client.list_jobs(state="paused")["items"] if j["id"] == job["id"]]
    assert listed and listed[0]["next_fire_at"] is None
    report = client.explain_job(job["id"])
    assert report["state"] == "paused"
    assert report["next_fire"] == {"at": None, "reason": "paused",
                                   "detail": report["next_fire"]["detail"]}
    assert "resumed" in report["next_fire"]["detail"]
    assert report["paused_since"] is not None
    assert report["summary"].startswith("paused")

    shown = cli(running_cluster, token, "jobs", "explain", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "paused since:" in shown.stdout
    assert "next fire:" in shown.stdout and "none" in shown.stdout
    assert "why:" in shown.stdout and "paused" in shown.stdout
    assert "no missed, skipped, coalesced or dead runs" in shown.stdout

    resumed = client.resume_job(job["id"])  # the pending fire is shown again
    assert at(resumed["next_fire_at"]) == at(job["next_fire_at"])
    assert client.explain_job(job["id"])["next_fire"]["reason"] == "due"


def test_a_job_ended_by_max_runs_says_so(running_cluster: LocalCluster, client: SyncClient,
                                         token: str) -> None:
    job = client.create_job(shell_job("@every 1s", max_runs=2))
    wait_for(lambda: client.get_job(job["id"])["state"] == "completed", 30,
             "the job to complete")
    report = client.explain_job(job["id"])
    assert report["state"] == "completed"
    assert report["next_fire"]["at"] is None
    assert report["next_fire"]["reason"] == "max_runs_reached"
    assert report["run_count"] == 2 and report["max_runs"] == 2
    assert "max_runs=2" in report["summary"]
    shown = cli(running_cluster, token, "jobs", "explain", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "max_runs_reached" in shown.stdout and "2 of max 2" in shown.stdout


def test_a_coalesced_misfire_after_resume_is_explained_and_listed(
        running_cluster: LocalCluster, client: SyncClient, token: str) -> None:
    job = client.create_job(shell_job("@every 2s"))
    wait_for(lambda: client.list_executions(job["id"])["items"], 20, "a first run")
    client.pause_job(job["id"])
    time.sleep(1)  # a run fired just before the pause settles
    before = {e["id"] for e in client.list_executions(job["id"], limit=100)["items"]}
    time.sleep(11)  # several fires fall due while paused, the first > 5 s late
    client.resume_job(job["id"])

    def coalesced() -> dict[str, Any] | None:
        items = client.list_executions(job["id"], limit=100)["items"]
        return next((e for e in items if (e.get("reason") or "").startswith("coalesced")),
                    None)

    catch_up = wait_for(coalesced, 20, "the catch-up run")
    assert "misfire=run_once" in catch_up["reason"]
    client.pause_job(job["id"])  # no more fires while the test looks

    # Newest first by scheduled_for: the catch-up run comes above every run fired before
    # the pause (it is scheduled at the first missed fire, after them all).
    items = client.list_executions(job["id"], limit=100)["items"]
    ids = [e["id"] for e in items]
    earlier = [ids.index(i) for i in before]
    assert earlier and ids.index(catch_up["id"]) < min(earlier)
    assert [at(e["scheduled_for"]) for e in items] == sorted(
        (at(e["scheduled_for"]) for e in items), reverse=True)

    report = client.explain_job(job["id"])
    recent = {e["id"]: e for e in report["recent"]}
    assert catch_up["id"] in recent
    assert recent[catch_up["id"]]["reason"] == catch_up["reason"]

    listed = cli(running_cluster, token, "executions", "list", job["id"], "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[-1] == "REASON"
    row = next(r for r in rows if r.startswith(catch_up["id"]))
    assert row.rstrip().endswith(catch_up["reason"])
    shown = cli(running_cluster, token, "jobs", "explain", job["id"])
    assert "recent runs not as planned" in shown.stdout
    assert catch_up["reason"] in shown.stdout


def test_a_dead_run_is_listed_with_its_error(running_cluster: LocalCluster,
                                             client: SyncClient) -> None:
    job = client.create_job({"name": "explain-dead", "schedule": NEVER_SOON,
                             "kind": "python", "python": {"function": "sample_tasks:always_fails"},
                             "retry": {"max_attempts": 1}})
    ok_run = client.create_job(shell_job(NEVER_SOON))
    dead = client.trigger_job(job["id"])
    fine = client.trigger_job(ok_run["id"])
    wait_for(lambda: client.get_execution(dead["id"])["state"] == "dead", 30, "a dead run")
    wait_for(lambda: client.get_execution(fine["id"])["state"] == "succeeded", 30,
             "a run that succeeds")
    report = client.explain_job(job["id"])
    assert [e["id"] for e in report["recent"]] == [dead["id"]]
    assert report["recent"][0]["state"] == "dead"
    assert "latest notable run dead: " in report["summary"]
    assert "triggered" not in report["summary"]  # its error, not "triggered", says why
    assert client.explain_job(ok_run["id"])["recent"] == []  # a triggered run that succeeded


def test_no_worker_alive_is_said(local_cluster: LocalCluster) -> None:
    local_cluster.start("scheduler")
    local_cluster.start("api")
    with SyncClient(local_cluster.api, local_cluster.token) as client:
        job = client.create_job(shell_job("immediate"))

        def waiting() -> dict[str, Any] | None:
            report = client.explain_job(job["id"])
            return report if report["queue"]["depth"] else None

        report = wait_for(waiting, 20, "the run to wait in the queue")
    assert report["workers"] == {"alive": 0, "instances": [], "error": None}
    assert report["queue"] == {"priority": "normal", "depth": 1, "error": None}
    assert "no worker is alive" in report["summary"]
    assert "1 run(s) waiting in the normal queue" in report["summary"]
