"""``jobsched dead-letters list|show|retry`` as a subprocess against a real running cluster:
dead executions listed (of the namespace or of one job), one inspected, retried one by one
and all of a job's at once, and the exit codes of what cannot be retried."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from jobsched.client import ApiError, SyncClient
from tests.e2e.conftest import LocalCluster
from tests.e2e.test_cli_client import as_json, cli, ok
from tests.e2e.tokens import admin_token

pytestmark = pytest.mark.timeout(90)


def _api(cluster: LocalCluster, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        cluster.api + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin_token(cluster)}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def dead_job(cluster: LocalCluster, name: str, runs: int = 1) -> tuple[str, list[str]]:
    """A job whose every run dies at its first attempt; ``runs`` of them, each dead."""
    job = _api(cluster, "POST", "/api/v1/jobs", {
        "name": name, "schedule": "0 0 1 1 *", "kind": "python",
        "python": {"function": "sample_tasks:always_fails"}, "retry": {"max_attempts": 1}})
    ids = [_api(cluster, "POST", f"/api/v1/jobs/{job['id']}/trigger")["id"]
           for _ in range(runs)]
    for execution_id in ids:
        wait_state(cluster, execution_id, "dead")
    return job["id"], ids


def wait_state(cluster: LocalCluster, execution_id: str, *states: str,
               timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        execution: dict[str, Any] = _api(cluster, "GET", f"/api/v1/executions/{execution_id}")
        if execution["state"] in states or time.monotonic() > deadline:
            assert execution["state"] in states, execution
            return execution
        time.sleep(0.2)


def test_list_show_and_retry_one(running_cluster: LocalCluster) -> None:
    job_id, (execution_id,) = dead_job(running_cluster, "dl-one")

    listed = ok(cli(running_cluster, "dead-letters", "list"))
    assert listed.splitlines()[0].split() == ["ID", "JOB", "SCHEDULED", "FOR", "DIED",
                                              "ATTEMPTS", "ERROR"]
    row = next(r for r in listed.splitlines() if r.startswith(execution_id))
    assert f"dl-one ({job_id[:8]})" in row and "this task always fails" in row
    only = as_json(cli(running_cluster, "dead-letters", "list", "--job", job_id, "-o", "json"))
    assert [e["id"] for e in only["items"]] == [execution_id]

    shown = cli(running_cluster, "dead-letters", "show", execution_id)
    assert "job name:   dl-one (python, job active)" in ok(shown)
    assert "state:      dead" in shown.stdout and "this task always fails" in shown.stdout
    assert f"retry it: jobsched dead-letters retry {execution_id}" in shown.stderr

    retried = ok(cli(running_cluster, "dead-letters", "retry", execution_id))
    assert retried.startswith(f"retried execution {execution_id}: queued, attempt 2")
    assert wait_state(running_cluster, execution_id, "dead")["attempt"] == 2  # ran again

    # What cannot be retried: one line each, and the exit code of the first
    unknown = "00000000-0000-4000-8000-000000000000"
    running = _api(running_cluster, "POST", "/api/v1/jobs", {
        "name": "dl-ok", "schedule": "immediate", "kind": "python",
        "python": {"function": "sample_tasks:noop"}})
    succeeded = wait_state(running_cluster, _api(
        running_cluster, "GET", f"/api/v1/jobs/{running['id']}/executions")["items"][0]["id"],
        "succeeded")
    missing = cli(running_cluster, "dead-letters", "retry", unknown, execution_id)
    assert missing.returncode == 3, missing
    assert f"jobsched: execution {unknown}: not found" in missing.stderr
    assert f"retried execution {execution_id}" in missing.stdout  # the others still are
    not_dead = cli(running_cluster, "dead-letters", "retry", succeeded["id"])
    assert not_dead.returncode == 1, not_dead
    assert "409 Execution is not dead" in not_dead.stderr
    usage = cli(running_cluster, "dead-letters", "retry")
    assert usage.returncode == 2 and "give EXECUTION_IDs or --all" in usage.stderr


def test_retry_all_of_one_job(running_cluster: LocalCluster) -> None:
    job_id, ids = dead_job(running_cluster, "dl-many", runs=3)
    _, (other,) = dead_job(running_cluster, "dl-other")

    done = cli(running_cluster, "dead-letters", "retry", "--all", "--job", job_id, "-o", "json")
    report = as_json(done)
    assert sorted(r["id"] for r in report) == sorted(ids)
    assert all(r["retried"] and r["execution"]["attempt"] == 2 for r in report)
    for execution_id in ids:
        wait_state(running_cluster, execution_id, "dead")  # died again, at attempt 2
    assert wait_state(running_cluster, other, "dead")["attempt"] == 1  # another job's: left

    nothing = cli(running_cluster, "dead-letters", "retry", "--all", "--job",
                  "00000000-0000-4000-8000-000000000000")
    assert nothing.returncode == 0 and "no dead executions" in nothing.stderr


def test_the_dashboard_serves_the_dead_letter_page(running_cluster: LocalCluster) -> None:
    """Without a browser: the page's script is served under the dashboard's policy and the
    navigation links to it (tests/e2e/test_dashboard_dead_letters.py drives it)."""
    with urllib.request.urlopen(running_cluster.api + "/", timeout=10) as response:
        assert '<a href="#/dead" data-nav="dead">Dead letters</a>' in response.read().decode()
    with urllib.request.urlopen(running_cluster.api + "/ui/deadletters.js", timeout=10) as rsp:
        policy = rsp.headers["Content-Security-Policy"]
        script = rsp.read().decode()
    assert "script-src 'self'" in policy and "export async function deadLettersPage" in script
    with urllib.request.urlopen(running_cluster.api + "/ui/app.js", timeout=10) as response:
        assert 'from "./deadletters.js"' in response.read().decode()


def test_the_python_client_lists_and_retries_dead_executions(
        running_cluster: LocalCluster) -> None:
    job_id, (execution_id,) = dead_job(running_cluster, "dl-client")
    with SyncClient(running_cluster.api, admin_token(running_cluster)) as client:
        page = client.list_dead(job_id=job_id)
        assert [e["id"] for e in page["items"]] == [execution_id]
        assert page["items"][0]["error"] == "RuntimeError: this task always fails"
        retried = client.retry_execution(execution_id)
        assert (retried["state"], retried["attempt"]) == ("queued", 2)
        with pytest.raises(ApiError) as refused:
            client.retry_execution("00000000-0000-4000-8000-000000000000")
        assert refused.value.not_found
