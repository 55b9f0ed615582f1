"""The whole loop through real processes: api -> PostgreSQL -> leader -> RabbitMQ -> worker."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import aiohttp
import orjson
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster
from tests.helpers import AMQP_URL

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def api(running_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, running_cluster.api, token=running_cluster.token)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


async def test_immediate_shell_job_succeeds_with_output(api: ApiClient) -> None:
    job = await api.create({
        "name": "hello", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", "echo hello $WHO; echo oops >&2"],
                  "env": {"WHO": "world"}},
    })
    assert job["state"] == "active" and job["shell"]["argv"][0] == "/bin/sh"
    execution = await api.wait_terminal(job["id"])
    assert execution["state"] == "succeeded", execution
    assert execution["exit_code"] == 0
    assert execution["output"] == "hello world\noops\n"
    assert [a["outcome"] for a in execution["attempts"]] == ["succeeded"]
    assert execution["worker"].startswith("worker")
    status, fetched, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200
    assert fetched["state"] == "completed"  # a one-shot job completes with its execution
    assert fetched["last_execution"]["id"] == execution["id"]


async def test_every_second_cron_fires_repeatedly(api: ApiClient) -> None:
    job = await api.create({
        "name": "tick", "schedule": "* * * * * *", "kind": "python",
        "python": {"function": "sample_tasks:noop"},
    })
    await asyncio.sleep(4.2)
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    items = await api.executions(job["id"])
    fires = sorted(parse(e["scheduled_for"]) for e in items)
    assert len(fires) >= 3, items
    assert len(set(fires)) == len(fires)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fires))
    assert all(f.microsecond == 0 for f in fires)


async def test_job_at_a_time_starts_on_time(api: ApiClient) -> None:
    due = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0) + timedelta(seconds=1)
    job = await api.create({
        "name": "at", "schedule": due.isoformat().replace("+00:00", "Z"), "kind": "python",
        "python": {"function": "sample_tasks:noop"},
    })
    assert parse(job["next_fire_at"]) == due
    execution = await api.wait_terminal(job["id"], timeout=10)
    assert execution["state"] == "succeeded"
    started = parse(execution["started_at"])
    assert parse(execution["scheduled_for"]) == due
    assert due <= started + timedelta(milliseconds=5)  # clocks of one machine
    assert started - due < timedelta(seconds=1), started - due


async def test_python_task_runs_with_its_args(api: ApiClient) -> None:
    job = await api.create({
        "name": "add", "schedule": "immediate", "kind": "python",
        "python": {"function": "sample_tasks:add", "args": {"a": 2, "b": 40}},
    })
    execution = await api.wait_terminal(job["id"])
    assert execution["state"] == "succeeded", execution
    assert execution["output"] == '{"sum":42}'
    job = await api.create({
        "name": "greet", "schedule": "immediate", "kind": "python",
        "python": {"function": "sample_tasks:greet", "args": {"name": "ada"}},
    })
    execution = await api.wait_terminal(job["id"])
    assert execution["output"] == f'"hello ada from attempt 1 of {execution["id"]}"'


async def test_failing_job_is_retried_then_dead_lettered(
    api: ApiClient, running_cluster: LocalCluster
) -> None:
    job = await api.create({
        "name": "fails", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", "echo failing; exit 3"]},
        "retry": {"max_attempts": 3, "backoff_s": 0.2, "max_backoff_s": 1},
    })
    execution = await api.wait_terminal(job["id"], timeout=30)
    assert execution["state"] == "dead", execution
    assert execution["attempt"] == 3
    assert [a["outcome"] for a in execution["attempts"]] == ["failed"] * 3
    assert [a["exit_code"] for a in execution["attempts"]] == [3, 3, 3]
    assert execution["error"] == "exit code 3"
    # and its message is in the dead-letter queue
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"jobsched.{running_cluster.cluster}.dead",
                                            passive=True)
        found = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and execution["id"] not in found:
            message = await queue.get(fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            found.append(message.body.decode())
            await message.nack(requeue=True)
            found = [b for b in found if execution["id"] in b] or found
        assert any(execution["id"] in body for body in found), found
    finally:
        await connection.close()


async def test_timeout_kills_the_process_group(api: ApiClient) -> None:
    job = await api.create({
        "name": "slow", "schedule": "immediate", "kind": "shell", "timeout_s": 0.5,
        "shell": {"argv": ["/bin/sh", "-c", "sleep 30 & sleep 30; echo never"]},
    })
    started = time.monotonic()
    execution = await api.wait_terminal(job["id"], timeout=15)
    assert time.monotonic() - started < 10
    assert execution["state"] == "dead"
    assert execution["attempts"][0]["outcome"] == "timed_out"
    assert "timed out after 0.5s" in execution["error"]


async def test_delete_stops_further_fires(api: ApiClient) -> None:
    job = await api.create({
        "name": "stopme", "schedule": "* * * * * *", "kind": "python",
        "python": {"function": "sample_tasks:noop"},
    })
    await asyncio.sleep(2.2)
    status, cancelled, _ = await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert cancelled["next_fire_at"] is None
    count = len(await api.executions(job["id"]))
    assert count >= 1
    await asyncio.sleep(2.5)
    assert len(await api.executions(job["id"])) == count
    status, again, _ = await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and again["state"] == "cancelled"  # idempotent


async def test_list_filters_and_paginates(api: ApiClient) -> None:
    created = []
    for i in range(5):
        created.append(await api.create({
            "name": "listed", "schedule": "0 0 1 1 *", "kind": "python",
            "python": {"function": "sample_tasks:noop"}, "labels": {"team": f"t{i % 2}"},
        }))
    status, page, _ = await api.request("GET", "/api/v1/jobs?name=listed&limit=2")
    assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        status, page, _ = await api.request(
            "GET", f"/api/v1/jobs?name=listed&limit=2&cursor={page['next_cursor']}")
        assert status == 200
        seen += [j["id"] for j in page["items"]]
    assert seen == [j["id"] for j in reversed(created)]
    status, page, _ = await api.request("GET", "/api/v1/jobs?name=listed&label=team=t0")
    expected = {created[0]["id"], created[2]["id"], created[4]["id"]}
    assert {j["id"] for j in page["items"]} == expected
    status, page, _ = await api.request("GET", "/api/v1/jobs?state=cancelled&name=listed")
    assert page["items"] == []


async def test_a_create_answers_the_job_as_every_read_shows_it(api: ApiClient) -> None:
    # The create's answer is written from what the database returned and what was
    # submitted (no read back): it must be the job every later read shows, byte for byte
    # (jsonb's key order; 1e16 stored as 10000000000000000, -0.0 as 0).
    job = {
        "name": "echoed", "schedule": "*/5 * * * *", "timezone": "Europe/Berlin",
        "kind": "http", "http": {"method": "POST", "url": "https://example.com/hook",
                                 "body": "é\u2028x", "headers": {"X-Team": "billing"}},
        "labels": {"team": "billing", "tier": "1"}, "retry": {"max_attempts": 3,
                                                              "backoff_s": 1.5},
        "start_at": "2031-01-01T00:00:00+02:00", "end_at": "2032-01-01T00:00:00Z",
        "jitter_s": -0.0, "priority": "high", "max_runs": 7, "timeout_s": 1e-3,
    }
    plain = {"name": "echoed", "schedule": "0 0 1 1 *", "kind": "python",
             "python": {"function": "sample_tasks:noop",
                        "args": {"float": 1e16, "zero": -0.0, "n": [1, 2.5, None]}}}
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"}
    for body in (job, plain):
        async with api.session.post(f"{api.base}/api/v1/jobs", data=orjson.dumps(body),
                                    headers=headers) as response:
            assert response.status == 201, await response.text()
            created = await response.read()
        job_id = orjson.loads(created)["id"]
        async with api.session.get(f"{api.base}/api/v1/jobs/{job_id}",
                                   headers=headers) as response:
            assert response.status == 200
            assert await response.read() == created
    status, page, _ = await api.request("GET", "/api/v1/jobs?name=echoed")
    assert status == 200 and len(page["items"]) == 2
    assert orjson.loads(created) == page["items"][0]


async def test_dead_executions_are_listed_and_can_be_retried(api: ApiClient) -> None:
    job = await api.create({
        "name": "dies", "schedule": "immediate", "kind": "python",
        "python": {"function": "sample_tasks:always_fails"},
        "retry": {"max_attempts": 2, "backoff_s": 0.1},
    })
    dead = await api.wait_terminal(job["id"], timeout=20)
    assert dead["state"] == "dead" and dead["attempt"] == 2
    status, listed, _ = await api.request("GET", "/api/v1/dead?limit=500")
    assert status == 200 and dead["id"] in [e["id"] for e in listed["items"]]
    status, retried, _ = await api.request("POST", f"/api/v1/executions/{dead['id']}/retry")
    assert status == 200 and retried["state"] == "queued" and retried["attempt"] == 3
    for _ in range(100):
        again = await api.execution(dead["id"])
        if again["state"] == "dead" and again["attempt"] == 3:
            break
        await asyncio.sleep(0.1)
    assert [a["outcome"] for a in again["attempts"]] == ["failed"] * 3
    status, _, _ = await api.request("POST", "/api/v1/executions/"
                                     "00000000-0000-0000-0000-000000000000/retry")
    assert status == 404
    ok = await api.create({"name": "ok", "schedule": "immediate", "kind": "python",
                           "python": {"function": "sample_tasks:noop"}})
    done = await api.wait_terminal(ok["id"])
    status, problem, _ = await api.request("POST", f"/api/v1/executions/{done['id']}/retry")
    assert status == 409 and "succeeded" in problem["detail"]
