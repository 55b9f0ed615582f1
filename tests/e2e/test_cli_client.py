"""``jobsched jobs|executions|cluster`` as a subprocess against a real running cluster:
output, --output json, --watch, the schedule preview, and every documented exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from jobsched.client import TERMINAL_STATES
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster
from tests.e2e.tokens import admin_token
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(60)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NEVER_SOON = "0 0 1 1 *"  # fires on 1 January only: the job stays put during the test
_TOKENS: dict[str, str] = {}


def cli(cluster: LocalCluster, *args: str, stdin: str | None = None,
        url: str | None = None, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """``jobsched ARGS`` as a user runs it, with JOBSCHED_URL and JOBSCHED_TOKEN set."""
    if cluster.database not in _TOKENS:
        _TOKENS[cluster.database] = admin_token(cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env["JOBSCHED_URL"] = url or cluster.api
    env["JOBSCHED_TOKEN"] = token or _TOKENS[cluster.database]
    return subprocess.run([sys.executable, "-m", "jobsched", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with ``code`` and said why in exactly one line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobsched: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def create_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    return as_json(cli(cluster, "jobs", "create", "-o", "json", *args))


def wait_first_execution(cluster: LocalCluster, job_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = as_json(cli(cluster, "executions", "list", job_id, "-o", "json"))["items"]
        if items and items[-1]["state"] in TERMINAL_STATES:
            return items[-1]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_create_previews_the_schedule_then_the_job_runs(running_cluster: LocalCluster) -> None:
    out = ok(cli(running_cluster, "jobs", "create", "--name", "cli-hello", "-s", "immediate",
                 "--env", "WHO=cli", "--", "/bin/sh", "-c", "echo hello $WHO"))
    assert "schedule 'immediate' (UTC), next fires:" in out
    match = re.search(rf"created job ({UUID}) \(cli-hello\)", out)
    assert match, out
    execution = wait_first_execution(running_cluster, match.group(1))
    assert execution["state"] == "succeeded"
    assert ok(cli(running_cluster, "executions", "logs", execution["id"])) == "hello cli\n"
    shown = ok(cli(running_cluster, "executions", "get", execution["id"]))
    assert re.search(r"state:\s+succeeded", shown) and "ATTEMPT  OUTCOME" in shown
    logs = as_json(cli(running_cluster, "executions", "logs", execution["id"], "-o", "json"))
    assert logs == [{"attempt": 1, "outcome": "succeeded", "exit_code": 0,
                     "output": "hello cli\n"}]


def test_preview_in_a_time_zone_and_dry_run_creates_nothing(
    running_cluster: LocalCluster,
) -> None:
    out = ok(cli(running_cluster, "jobs", "create", "--name", "cli-dry", "-s", "0 9 * * *",
                 "-z", "Europe/Berlin", "--dry-run", "--", "/bin/true"))
    assert "schedule '0 9 * * *' (Europe/Berlin), next fires:" in out
    assert len(re.findall(r"^  \d{4}-\d\d-\d\d 09:00:00 \+0[12]:00  \(", out, re.M)) == 5, out
    listed = as_json(cli(running_cluster, "jobs", "list", "--name", "cli-dry", "-o", "json"))
    assert listed["items"] == []


def test_a_hashed_schedule_is_created_though_its_times_need_the_job_id(
    running_cluster: LocalCluster,
) -> None:
    # The preview cannot show H values before the job has an id: it says so, and the job
    # is created (not refused as an invalid schedule).
    result = cli(running_cluster, "jobs", "create", "--name", "cli-hashed", "-s", "H H * * *",
                 "--", "/bin/true")
    out = ok(result)
    assert "has hashed values (H)" in result.stderr
    match = re.search(rf"created job ({UUID}) \(cli-hashed\), next fire ", out)
    assert match, out
    ok(cli(running_cluster, "jobs", "cancel", match.group(1)))


def test_job_lifecycle_through_every_jobs_command(running_cluster: LocalCluster) -> None:
    job = create_json(running_cluster, "--name", "cli-life", "-s", NEVER_SOON,
                      "--python", "sample_tasks:add", "--arg", "a=2", "--arg", "b=3",
                      "--label", "team=cli", "--timeout", "30")
    job_id = job["id"]
    assert job["python"] == {"function": "sample_tasks:add", "args": {"a": 2, "b": 3}}
    assert job["labels"] == {"team": "cli"} and job["state"] == "active"

    table = ok(cli(running_cluster, "jobs", "list", "--label", "team=cli"))
    header, *rows = table.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "SCHEDULE", "NEXT", "FIRE", "LAST"]
    assert [r.split()[:3] for r in rows] == [[job_id, "cli-life", "active"]]

    details = ok(cli(running_cluster, "jobs", "get", job_id))
    assert re.search(r"runs:\s+sample_tasks:add\(\{\"a\":2,\"b\":3\}\)", details), details
    assert re.search(r"schedule:\s+0 0 1 1 \*", details)

    updated = as_json(cli(running_cluster, "jobs", "update", job_id, "-s", "30 8 * * *",
                          "-z", "Europe/Berlin", "--set", 'retry={"max_attempts": 2}',
                          "-o", "json"))
    assert (updated["schedule"], updated["timezone"]) == ("30 8 * * *", "Europe/Berlin")
    assert updated["retry"]["max_attempts"] == 2

    assert "paused: paused" in ok(cli(running_cluster, "jobs", "pause", job_id))
    paused = as_json(cli(running_cluster, "jobs", "list", "--state", "paused", "-o", "json"))
    assert job_id in [j["id"] for j in paused["items"]]
    assert "resumed: active" in ok(cli(running_cluster, "jobs", "resume", job_id))

    watched = ok(cli(running_cluster, "jobs", "trigger", job_id, "--watch"))
    assert re.search(rf"triggered execution {UUID}", watched)
    assert re.search(r"succeeded\s+attempt 1 on worker", watched), watched
    assert watched.rstrip().endswith('{"sum":5}')

    triggered = as_json(cli(running_cluster, "jobs", "trigger", job_id, "-o", "json"))
    assert triggered["job_id"] == job_id and triggered["state"] in ("queued", "running",
                                                                     "succeeded")
    followed = cli(running_cluster, "executions", "get", triggered["id"], "--watch", "-o", "json")
    states = [json.loads(line)["state"] for line in ok(followed).splitlines()]
    assert states[-1] == "succeeded"

    history = ok(cli(running_cluster, "executions", "list", job_id))
    assert len(history.splitlines()) == 3 and history.count("succeeded") == 2

    assert "cancelled: cancelled" in ok(cli(running_cluster, "jobs", "cancel", job_id))
    ok(cli(running_cluster, "jobs", "cancel", job_id))  # cancelling again is not an error
    line = one_error_line(cli(running_cluster, "jobs", "pause", job_id), 1)
    assert line == "jobsched: 409 Job cannot be paused: job is cancelled"


def test_watch_of_a_failing_run_exits_5_and_logs_show_every_attempt(
    running_cluster: LocalCluster,
) -> None:
    job = create_json(running_cluster, "--name", "cli-fails", "-s", NEVER_SOON,
                      "--retries", "2", "--backoff", "0.1",
                      "--", "/bin/sh", "-c", "echo try; exit 3")
    result = cli(running_cluster, "jobs", "trigger", job["id"], "--watch")
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert re.fullmatch(rf"jobsched: execution {UUID} ended dead: exit code 3\n", result.stderr)
    execution_id = re.search(rf"triggered execution ({UUID})", result.stdout).group(1)  # type: ignore[union-attr]
    logs = ok(cli(running_cluster, "executions", "logs", execution_id))
    assert logs == ("--- attempt 1 (failed, exit 3) on worker-1 ---\ntry\n"
                    "--- attempt 2 (failed, exit 3) on worker-1 ---\ntry\n")
    assert ok(cli(running_cluster, "executions", "logs", execution_id, "--attempt", "2")) == "try\n"
    line = one_error_line(cli(running_cluster, "executions", "logs", execution_id,
                              "--attempt", "9"), 3)
    assert line == f"jobsched: execution {execution_id} has no attempt 9"
    assert cli(running_cluster, "executions", "get", execution_id, "--watch").returncode == 5


def test_create_from_a_json_file_on_stdin(running_cluster: LocalCluster) -> None:
    body = {"name": "cli-file", "schedule": NEVER_SOON, "kind": "http",
            "http": {"url": "https://example.com/never", "method": "POST"}}
    job = as_json(cli(running_cluster, "jobs", "create", "-f", "-", "-o", "json",
                      stdin=json.dumps(body)))
    assert job["name"] == "cli-file" and job["http"]["method"] == "POST"
    ok(cli(running_cluster, "jobs", "cancel", job["id"]))


def test_cluster_status(running_cluster: LocalCluster) -> None:
    out = ok(cli(running_cluster, "cluster", "status"))
    assert re.search(r"^leader:\s+scheduler-0 \(epoch \d+, since ", out, re.M), out
    assert re.search(r"^schedulers: scheduler-0 \(leader\)$", out, re.M)
    assert re.search(r"^workers:\s+1$", out, re.M) and "worker-1" in out
    status = as_json(cli(running_cluster, "cluster", "status", "-o", "json"))
    assert status["leader"]["instance"] == "scheduler-0"
    assert set(status["queues"]) >= {"executions", "dead"}


def test_not_found_is_exit_3_with_one_line(running_cluster: LocalCluster) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for args in (("jobs", "get", missing), ("jobs", "pause", missing),
                 ("jobs", "trigger", missing), ("executions", "list", missing),
                 ("executions", "get", missing), ("jobs", "get", "not-a-uuid")):
        line = one_error_line(cli(running_cluster, *args), 3)
        assert line.endswith(" not found") and args[-1] in line, line


def test_invalid_input_is_exit_2_and_names_the_field(running_cluster: LocalCluster) -> None:
    never = cli(running_cluster, "jobs", "create", "--name", "cli-bad", "-s", "0 0 30 2 *",
                "--", "/bin/true")
    line = one_error_line(never, 2)
    assert line.startswith("jobsched: 422 ") and "schedule: " in line and "never" in line
    assert as_json(cli(running_cluster, "jobs", "list", "--name", "cli-bad", "-o",
                       "json"))["items"] == []  # nothing was created
    zone = one_error_line(cli(running_cluster, "jobs", "create", "--name", "cli-bad", "-s",
                              "0 9 * * *", "-z", "Mars/Olympus", "--", "/bin/true"), 2)
    assert "timezone" in zone
    function = one_error_line(cli(running_cluster, "jobs", "create", "--name", "cli-bad", "-s",
                                  "immediate", "--python", "not a path"), 2)
    assert "python.function: must be 'module.path:function'" in function
    job = create_json(running_cluster, "--name", "cli-upd", "-s", NEVER_SOON, "--", "/bin/true")
    patch = one_error_line(cli(running_cluster, "jobs", "update", job["id"], "--set",
                               "timeout_s=-1"), 2)
    assert "timeout_s" in patch


def test_usage_errors_are_exit_2(running_cluster: LocalCluster) -> None:
    result = cli(running_cluster, "jobs", "create", "--name", "x", "--", "/bin/true")
    assert result.returncode == 2 and "missing schedule" in result.stderr
    result = cli(running_cluster, "jobs", "create", "--name", "x", "-s", "immediate")
    assert result.returncode == 2 and "missing kind" in result.stderr
    result = cli(running_cluster, "jobs", "create", "--name", "x", "-s", "immediate",
                 "--python", "m:f", "--http", "http://x")
    assert result.returncode == 2 and "give one of" in result.stderr
    result = cli(running_cluster, "jobs", "update", "00000000-0000-4000-8000-000000000000")
    assert result.returncode == 2 and "nothing to change" in result.stderr
    result = cli(running_cluster, "jobs", "list", "--label", "no-equals-sign")
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr


def test_unreachable_api_is_exit_4(running_cluster: LocalCluster) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(cli(running_cluster, "jobs", "list", url=url), 4)
    assert line == f"jobsched: cannot reach {url}: connection refused"
    line = one_error_line(cli(running_cluster, "cluster", "status", "--url", url), 4)
    assert "cannot reach" in line


def test_a_rejected_token_is_exit_1_with_the_reason(running_cluster: LocalCluster) -> None:
    result = cli(running_cluster, "jobs", "list", token="not-a-real-token")
    if result.returncode == 0:
        pytest.skip("this api does not enforce authentication")
    line = one_error_line(result, 1)
    assert line.startswith("jobsched: 401 Unauthorized: "), line
