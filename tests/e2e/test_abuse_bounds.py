"""Issue 13's abuse findings replayed against real api processes, each now refused: token
guessing is limited per client address before the database is asked, a schedule preview
costs the event loop next to nothing, retry does not revive what was cancelled or
disabled, a forged cursor is a 400 that never reaches a database (nor benches the read
replica), times at the calendar's edge and deep JSON are 4xx, and names refuse control
and bidirectional characters."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import RoleProcess
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(120)

PYTHON_JOB: dict[str, Any] = {"name": "bounded", "schedule": "0 0 1 1 *", "kind": "python",
                              "python": {"function": "sample_tasks:noop"}}
FAILING_JOB: dict[str, Any] = {"name": "fails", "schedule": "0 0 1 1 *", "kind": "python",
                               "python": {"function": "sample_tasks:always_fails"}}
# The finding's cursor: a list whose id is the integer 1.
TAMPERED_CURSOR = "WyIyMDIwLTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwxXQ"
FAILURE_BURST = 3


@dataclass
class Deployment:
    cluster: LocalCluster
    main: RoleProcess
    # behind a "proxy" (127.0.0.1 is trusted), few failed logins allowed, python disabled,
    # reads routed to a read replica
    guarded: RoleProcess

    def url(self, process: RoleProcess) -> str:
        return process.url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
               template_db: str) -> Iterator[Deployment]:
    cluster = _new_cluster(tmp_path_factory.mktemp("abuse"), zookeeper, template_db)
    cluster.start("scheduler")
    cluster.start("worker", extra=("--import", "sample_tasks"))
    main = cluster.start("api")
    guarded = cluster.start(
        "api", JOBSCHED_TRUSTED_PROXIES="127.0.0.1/32",
        JOBSCHED_AUTH_FAILURE_BURST=str(FAILURE_BURST), JOBSCHED_AUTH_FAILURES_PER_S="0.05",
        JOBSCHED_DISABLED_KINDS="python", JOBSCHED_DATABASE_READ_URL=cluster.database_url)
    yield Deployment(cluster, main, guarded)
    _teardown(cluster)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def api(deployment: Deployment, session: aiohttp.ClientSession,
        process: RoleProcess | None = None) -> ApiClient:
    return ApiClient(session, deployment.url(process or deployment.main),
                     token=deployment.cluster.token)


def unknown_token() -> str:
    return "jsk_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


async def as_client(session: aiohttp.ClientSession, url: str, client: str, token: str,
                    path: str = "/api/v1/jobs?limit=1",
                    timeout: float = 10) -> tuple[int, dict[str, str]]:
    """A request as if relayed by the proxy for ``client`` (X-Forwarded-For)."""
    async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=timeout),
                           headers={"Authorization": f"Bearer {token}",
                                    "X-Forwarded-For": client}) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_guessing_tokens_is_limited_per_client_address_before_the_database(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    url = deployment.url(deployment.guarded)
    guesser, bystander = "203.0.113.7", "198.51.100.20"
    for _ in range(FAILURE_BURST):
        status, _ = await as_client(session, url, guesser, unknown_token())
        assert status == 401
    status, headers = await as_client(session, url, guesser, unknown_token())
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert headers["Content-Type"] == "application/problem+json"
    status, _ = await as_client(session, url, guesser, "not-even-a-token")  # malformed too
    assert status == 429
    # entries a client writes itself (left of what the proxy appends) change nothing
    status, _ = await as_client(session, url, f"192.0.2.1, {guesser}", unknown_token())
    assert status == 429
    # another address has its own allowance
    status, _ = await as_client(session, url, bystander, unknown_token())
    assert status == 401
    # a valid token this api has not looked up yet waits too (no lookup is the point)...
    status, _ = await as_client(session, url, guesser, deployment.cluster.token)
    assert status == 429
    # ...and passes once the api knows it (looked up for another address moments ago)
    status, _ = await as_client(session, url, bystander, deployment.cluster.token)
    assert status == 200
    status, _ = await as_client(session, url, guesser, deployment.cluster.token)
    assert status == 200

    # While api_tokens is locked, any token lookup would hang: the limited address is
    # still answered at once, so its guesses never reach the database; a fresh address's
    # guess does wait for the table.
    conn = await asyncpg.connect(deployment.cluster.database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        status, _ = await as_client(session, url, guesser, unknown_token(), timeout=5)
        assert status == 429 and time.monotonic() - started < 2
        status, _ = await as_client(session, url, guesser, deployment.cluster.token)
        assert status == 200  # a token this api looked up moments ago: no lookup either
        fresh = asyncio.create_task(as_client(session, url, "198.51.100.99", unknown_token()))
        done, _ = await asyncio.wait({fresh}, timeout=1.5)
        assert not done, "an unlimited address's unknown token should need the database"
        await transaction.rollback()
        status, _ = await fresh
        assert status == 401
    finally:
        await conn.close()


async def test_retry_refuses_a_cancelled_job_and_a_disabled_kind(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    main, guarded = api(deployment, session), api(deployment, session, deployment.guarded)

    async def dead_execution() -> tuple[str, str]:
        job = await main.create(FAILING_JOB)
        status, execution, _ = await main.request("POST", f"/api/v1/jobs/{job['id']}/trigger")
        assert status == 201, execution
        for _ in range(200):
            execution = await main.execution(execution["id"])
            if execution["state"] == "dead":
                return job["id"], execution["id"]
            await asyncio.sleep(0.05)
        raise AssertionError(f"never dead: {execution}")

    job_id, execution_id = await dead_execution()
    status, problem, _ = await guarded.request("POST", f"/api/v1/executions/{execution_id}/retry")
    assert status == 409, problem
    assert problem["errors"] == [{"field": "kind", "reason": "job kind 'python' is disabled "
                                                             "on this deployment"}]
    status, _, _ = await main.request("DELETE", f"/api/v1/jobs/{job_id}")
    assert status == 200
    status, problem, _ = await main.request("POST", f"/api/v1/executions/{execution_id}/retry")
    assert status == 409 and problem["title"] == "Job is cancelled", problem
    assert (await main.execution(execution_id))["state"] == "dead"  # left as it was
    # the control: a dead execution of a live job of an enabled kind is retried
    _, other = await dead_execution()
    status, retried, _ = await main.request("POST", f"/api/v1/executions/{other}/retry")
    assert status == 200 and retried["state"] == "queued", retried


async def test_a_forged_cursor_is_400_and_reaches_no_database(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    guarded = api(deployment, session, deployment.guarded)
    job = await api(deployment, session).create(PYTHON_JOB)

    def encoded(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    real_id = str(uuid.uuid4())
    forged = [
        TAMPERED_CURSOR,
        encoded(["0001-01-01T00:00:00+01:00", real_id]),  # no UTC reading: once a 500
        encoded(["2020-01-01T00:00:00+05:00", real_id]),  # not the form this API writes
        encoded(["2020-01-01T00:00:00+00:00", real_id.upper()]),
        encoded({"at": "2020-01-01T00:00:00+00:00", "id": real_id}),
        encoded(["2020-01-01T00:00:00+00:00", real_id, 3]),
        encoded(["2020-01-01T00:00:00+00:00", real_id]) + "==",
        "%%%", "", "A" * 200,
    ]
    status, before, _ = await guarded.request("GET", "/readyz")
    for cursor in forged:
        for path in ("/api/v1/jobs", f"/api/v1/jobs/{job['id']}/executions", "/api/v1/dead"):
            status, problem, content_type = await guarded.request(
                "GET", path, params={"cursor": cursor})
            assert status == 400, (path, cursor, problem)
            assert content_type == "application/problem+json"
            assert problem["errors"][0]["field"] == "cursor"
    status, after, _ = await guarded.request("GET", "/readyz")
    assert after["postgres_read"]["healthy"] is True
    # the executions route reads the job first (it must exist); nothing read a cursor
    served = after["postgres_read"]["served_replica"]
    assert served - before["postgres_read"]["served_replica"] == len(forged)
    # and a cursor the api wrote still pages
    status, page, _ = await guarded.request("GET", "/api/v1/jobs?limit=1")
    if page["next_cursor"]:
        status, _, _ = await guarded.request("GET", "/api/v1/jobs",
                                             params={"limit": "1", "cursor": page["next_cursor"]})
        assert status == 200


EDGE_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, body, status, field named)
    ("POST", "/api/v1/schedules/preview",
     {"schedule": "0 0 * * *", "start": "0001-01-01T00:00:00+05:00"}, 422, "start"),
    ("POST", "/api/v1/schedules/preview",
     {"schedule": "0 0 * * *", "start": "9999-12-31T23:00:00-05:00"}, 422, "start"),
    ("POST", "/api/v1/jobs", {**PYTHON_JOB, "start_at": "0001-01-01T00:00:00+01:00"},
     422, "start_at"),
    ("POST", "/api/v1/jobs", {**PYTHON_JOB, "end_at": "9999-12-31T23:59:59-01:00"},
     422, "end_at"),
    # no fire before the calendar ends: the schedule is to blame, as for a past year
    ("POST", "/api/v1/jobs", {**PYTHON_JOB, "schedule": "@every 3650d",
                              "start_at": "9999-12-31T23:00:00Z"}, 422, "schedule"),
    ("POST", "/api/v1/jobs", {**PYTHON_JOB, "start_at": "9999-12-31T23:59:59Z"},
     422, "schedule"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), EDGE_CASES)
async def test_times_at_the_calendar_edge_are_4xx(
    deployment: Deployment, session: aiohttp.ClientSession, method: str, path: str,
    body: dict[str, Any], status: int, field: str
) -> None:
    got, problem, content_type = await api(deployment, session).request(method, path,
                                                                        json=body)
    assert (got, content_type) == (status, "application/problem+json"), problem
    assert field in [e["field"] for e in problem["errors"]], problem


async def test_previews_that_reach_year_9999_just_end(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    main = api(deployment, session)
    for body in ({"schedule": "0 0 * * *", "start": "9999-12-31T00:00:00Z"},
                 {"schedule": "@every 3650d", "start": "9999-01-01T00:00:00Z"},
                 # a fire on 9999-12-31 UTC that is already year 10000 on the wall clock
                 {"schedule": "0 12 * * *", "timezone": "Pacific/Kiritimati",
                  "start": "9999-12-30T00:00:00Z", "count": 5}):
        status, preview, _ = await main.request("POST", "/api/v1/schedules/preview",
                                                json=body)
        assert status == 200, (body, preview)
        assert all(item["utc"].startswith("9999-") for item in preview["items"])


@pytest.mark.parametrize("depth", [41, 254, 256, 1000, 1023, 1100, 20_000])
async def test_a_deeply_nested_patch_is_4xx(
    deployment: Deployment, session: aiohttp.ClientSession, depth: int
) -> None:
    main = api(deployment, session)
    job = await main.create(PYTHON_JOB)
    for body in ('{"python": {"args": {"x": ' + '{"a": ' * depth + "1" + "}" * depth + "}}}",
                 '{"zzz": ' + "[" * depth + "1" + "]" * depth + "}"):
        async with session.patch(f"{main.base}/api/v1/jobs/{job['id']}", data=body,
                                 headers={"Authorization": f"Bearer {main.token}",
                                          "Content-Type": "application/json"}) as response:
            problem = await response.json(content_type=None)
            assert response.status in (400, 422), (depth, problem)
            assert response.headers["Content-Type"] == "application/problem+json"
    status, fetched, _ = await main.request("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and fetched["python"] == job["python"]


@pytest.mark.parametrize("name", ["evil\u202ecod.exe", "bell\x07", "esc\x1b[2J", "c1\x9b",
                                  "line\u2028break", "isolate\u2066x\u2069"])
async def test_names_and_labels_refuse_control_and_bidi_characters(
    deployment: Deployment, session: aiohttp.ClientSession, name: str
) -> None:
    main = api(deployment, session)
    for job, field in (({**PYTHON_JOB, "name": name}, "name"),
                       ({**PYTHON_JOB, "labels": {"team": name}}, "labels.team")):
        status, problem, _ = await main.request("POST", "/api/v1/jobs", json=job)
        assert status == 422, problem
        assert problem["errors"] == [{"field": field, "reason": "must not contain control "
                                      "characters or bidirectional formatting characters"}]
    created = await main.create({**PYTHON_JOB, "name": "Grüße, 東京 🎉"})
    assert created["name"] == "Grüße, 東京 🎉"


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds the process's main thread (the event loop) has used."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_previews_and_schedule_checks_cost_the_event_loop_little(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    """The finding: 0 0 29 2 * in Europe/Berlin, 100 fires, took ~270 ms of event-loop
    CPU. Measured on the api's main thread over many requests (distinct schedules, so no
    cache helps): at most 20 ms each."""
    main = api(deployment, session)
    pid = deployment.main.pid
    assert pid is not None
    rounds = 20

    before = main_thread_cpu_s(pid)
    for minute in range(rounds):
        status, preview, _ = await main.request("POST", "/api/v1/schedules/preview", json={
            "schedule": f"{minute} 0 29 2 *", "timezone": "Europe/Berlin", "count": 100})
        assert status == 200 and len(preview["items"]) == 100, preview
    preview_cpu = (main_thread_cpu_s(pid) - before) / rounds

    before = main_thread_cpu_s(pid)
    for minute in range(rounds):
        # a 50-year search that finds no fire (422), and a fire every 28 years (201)
        status, _, _ = await main.request("POST", "/api/v1/jobs", json={
            **PYTHON_JOB, "schedule": f"{minute} 0 31 2,4,6,9,11 *",
            "timezone": "Europe/Berlin"})
        assert status == 422
        status, _, _ = await main.request("POST", "/api/v1/jobs", json={
            **PYTHON_JOB, "schedule": f"{minute} 0 * 2 1#5", "timezone": "Europe/Berlin"})
        assert status == 201
    create_cpu = (main_thread_cpu_s(pid) - before) / (2 * rounds)
    print(f"\nevent-loop CPU per request: preview {preview_cpu * 1000:.1f} ms, "
          f"create {create_cpu * 1000:.1f} ms")
    assert preview_cpu <= 0.020
    assert create_cpu <= 0.020


async def test_a_flood_of_previews_is_refused_not_queued(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    main = api(deployment, session)

    async def preview(i: int) -> tuple[int, Any]:
        status, body, _ = await main.request("POST", "/api/v1/schedules/preview", json={
            "schedule": f"{i % 60} {i // 60} * 2 1#5", "timezone": "Europe/Berlin",
            "count": 100})
        return status, body

    answers = await asyncio.gather(*(preview(i) for i in range(40)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 8
    refused = next(body for status, body in answers if status == 503)
    assert refused["title"] == "Too many previews at once"
    status, _, _ = await main.request("GET", "/api/v1/jobs?limit=1")
    assert status == 200


TERMINAL_UNSAFE = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def run_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=deployment.url(deployment.main),
               JOBSCHED_TOKEN=deployment.cluster.token)
    return subprocess.run([sys.executable, "-m", "jobsched", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=30)


async def test_the_cli_prints_what_the_server_sent_inert(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    """A job's output that retitles the terminal, clears it, colours text and reverses
    it; and a server error that echoes an escape sequence back."""
    main = api(deployment, session)
    script = r"printf '\033]0;pwned\007\033[2J\033[1;31mred\033[0m \342\200\256desrever\r\n'"
    job = await main.create({"name": "escapes", "schedule": "immediate", "kind": "shell",
                             "shell": {"argv": ["/bin/sh", "-c", script]}})
    execution = await main.wait_terminal(job["id"], timeout=30)
    assert execution["state"] == "succeeded", execution
    assert "\x1b]0;pwned" in execution["output"]  # the API keeps the output as it was

    for args in (("executions", "logs", execution["id"]),
                 ("executions", "get", execution["id"]),
                 ("executions", "list", job["id"]),
                 ("jobs", "get", job["id"])):
        result = run_cli(deployment, *args)
        assert result.returncode == 0, result
        assert not [c for c in TERMINAL_UNSAFE if c in result.stdout], (args, result.stdout)
    logs = run_cli(deployment, "executions", "logs", execution["id"]).stdout
    assert logs == "red \ufffddesrever\n"
    as_json = run_cli(deployment, "executions", "logs", execution["id"], "-o", "json").stdout
    assert not [c for c in TERMINAL_UNSAFE if c in as_json]
    assert json.loads(as_json)[0]["output"] == execution["output"]  # same value, escaped

    # the server's error echoes the time zone it refuses, escape sequence and all
    result = run_cli(deployment, "jobs", "create", "--name", "x", "-s", "0 0 * * *",
                     "-z", "\x1b]0;pwned\x07Europe/Berlin", "--python", "a:b", "--yes")
    assert result.returncode == 2, result
    assert "unknown time zone" in result.stderr
    assert not [c for c in TERMINAL_UNSAFE if c in result.stderr], result.stderr
