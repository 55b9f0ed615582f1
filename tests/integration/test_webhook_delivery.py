"""The worker's webhook delivery loop on a real PostgreSQL, sending to real local receivers
that verify every signature with the standardwebhooks library: delivery, retry after a
failure, 410, redirects not followed, egress rules, and one dead receiver not delaying
another's deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from jobsched.adapters.postgres.webhooks import PostgresWebhooks
from jobsched.crypto import SecretBox, new_key
from jobsched.domain.egress import EgressPolicy
from jobsched.domain.webhooks import new_secret
from jobsched.metrics import Metrics
from jobsched.ports import EndpointColumns
from jobsched.settings import Settings
from jobsched.worker.webhooks import WebhookDeliverer
from tests.receiver import Receiver

KEY = new_key()
LOOPBACK = EgressPolicy.from_lists(["127.0.0.0/8"])


async def _endpoint(pool: asyncpg.Pool, url: str, secret: str) -> uuid.UUID:
    row = await PostgresWebhooks(pool).create_endpoint("default", EndpointColumns(
        url=url, events=["execution.succeeded"], labels={}, description="", enabled=True),
        SecretBox([KEY]).seal(secret.encode()))
    return uuid.UUID(str(row["id"]))


async def _events(pool: asyncpg.Pool, count: int) -> None:
    for i in range(count):
        await pool.execute("SELECT webhook_enqueue('default', 'execution.succeeded', '{}', $1)",
                           {"n": i})


@contextlib.asynccontextmanager
async def _delivering(pool: asyncpg.Pool, policy: EgressPolicy = LOOPBACK,
                      **settings: Any) -> AsyncIterator[WebhookDeliverer]:
    options = {"instance": "deliverer", "webhook_poll_s": 0.2, **settings}
    deliverer = WebhookDeliverer(Settings(**options), PostgresWebhooks(pool), SecretBox([KEY]),
                                 policy, Metrics("worker", "test"))
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        yield deliverer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM webhook_deliveries")]


async def _until(pool: asyncpg.Pool, check: Any, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await _rows(pool)
        if check(rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_a_delivery_arrives_signed_and_is_recorded(pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret]) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        async with _delivering(pool):
            await _events(pool, 3)
            got = await receiver.wait_for(3)
            rows = await _until(pool, lambda rs: all(r["state"] == "succeeded" for r in rs))
    assert all(r.verified_with == [secret] for r in got)
    assert {r.json["type"] for r in got} == {"execution.succeeded"}
    assert sorted(r.json["data"]["n"] for r in got) == [0, 1, 2]
    assert all(r.headers["content-type"] == "application/json" for r in got)
    assert sorted(receiver.event_ids()) == sorted(str(r["event_id"]) for r in rows)
    assert all(r["state"] == "succeeded" and r["attempts"] == 1 and r["last_status"] == 200
               and r["last_answer"] == "answered 200" and r["next_attempt_at"] is None
               for r in rows)


async def test_a_failure_is_retried_on_schedule_with_the_same_webhook_id(
        pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret], answers=[500]) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        async with _delivering(pool):
            await _events(pool, 1)
            [first] = await receiver.wait_for(1)
            rows = await _until(pool, lambda rs: rs[0]["state"] == "failed")
            assert rows[0]["last_status"] == 500 and rows[0]["last_error"] == "answered 500"
            wait = (rows[0]["next_attempt_at"] - rows[0]["last_attempt_at"]).total_seconds()
            assert 4.4 <= wait <= 5.6  # the schedule's second step, 5 s ± 10 %
            [_, second] = await receiver.wait_for(2, timeout=10)
            rows = await _until(pool, lambda rs: rs[0]["state"] == "succeeded")
    assert second.event_id == first.event_id and second.body == first.body
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    assert 4.0 <= second.at - first.at <= 7.0
    assert rows[0]["attempts"] == 2 and second.verified_with == [secret]


async def test_410_disables_the_endpoint(pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret], default=410) as receiver:
        endpoint = await _endpoint(pool, receiver.url(), secret)
        async with _delivering(pool):
            await _events(pool, 1)
            await receiver.wait_for(1)
            await _until(pool, lambda rs: rs[0]["last_status"] == 410)
            await _events(pool, 2)  # recorded for nobody: the endpoint is disabled
            await asyncio.sleep(0.5)
    row = await PostgresWebhooks(pool).get_endpoint(endpoint, "default")
    assert row is not None and row["enabled"] is False
    assert len(receiver.received) == 1 and len(await _rows(pool)) == 1


async def test_redirects_are_not_followed(pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret], default=302) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        async with _delivering(pool):
            await _events(pool, 1)
            rows = await _until(pool, lambda rs: rs[0]["state"] == "failed")
    assert "redirects are not followed" in rows[0]["last_error"]
    assert len(receiver.received) == 1


async def test_the_egress_rules_refuse_loopback_by_default(pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret]) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        await _endpoint(pool, f"http://localhost:{receiver.port}/by-name", secret)
        async with _delivering(pool, policy=EgressPolicy()):
            await _events(pool, 1)
            rows = await _until(pool, lambda rs: all(r["state"] == "failed" for r in rs))
    assert receiver.received == []
    assert len(rows) == 2
    for row in rows:
        assert "refused by the egress rules" in row["last_error"]
        assert "loopback" in row["last_error"] and "JOBSCHED_HTTP_ALLOW_CIDRS" in row["last_error"]


async def test_a_dead_receiver_does_not_delay_another(pool: asyncpg.Pool) -> None:
    """30 deliveries to a receiver that never answers take at most its per-endpoint share of
    the slots; the other receiver's deliveries arrive at once."""
    secret = new_secret()
    async with Receiver(secrets=[secret], default=0) as dead, \
            Receiver(secrets=[secret]) as alive:
        await _endpoint(pool, dead.url(), secret)
        await _events(pool, 30)
        await _endpoint(pool, alive.url(), secret)
        async with _delivering(pool, webhook_concurrency=8, webhook_endpoint_concurrency=2,
                               webhook_timeout_s=30):
            await dead.wait_for(2)
            started = time.monotonic()
            await _events(pool, 20)  # to both endpoints
            await alive.wait_for(20, timeout=5)
            took = time.monotonic() - started
            assert len(dead.received) == 2  # its share, and no more, while it hangs
            dead.release.set()
    assert took < 3, took
    assert all(r.verified_with == [secret] for r in alive.received)


async def test_two_deliverers_share_the_work_without_sending_twice(pool: asyncpg.Pool) -> None:
    secret = new_secret()
    async with Receiver(secrets=[secret]) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        await _events(pool, 200)
        async with _delivering(pool, instance="a") as first, \
                _delivering(pool, instance="b") as second:
            await receiver.wait_for(200, timeout=30)
            await _until(pool, lambda rs: all(r["state"] == "succeeded" for r in rs))
        ids = receiver.event_ids()
    assert len(ids) == len(set(ids)) == 200
    assert first.stats["succeeded"] > 0 and second.stats["succeeded"] > 0
    rows = await _rows(pool)
    assert {r["state"] for r in rows} == {"succeeded"}
    assert all(r["delivered_at"] <= datetime.now(UTC) for r in rows)


async def test_a_backlog_to_one_endpoint_flows_at_its_concurrency(pool: asyncpg.Pool) -> None:
    """Each freed slot is taken again at once (not at the next poll): 400 deliveries to
    one endpoint, 8 at a time, take well under a second each poll would allow."""
    secret = new_secret()
    async with Receiver(secrets=[secret]) as receiver:
        await _endpoint(pool, receiver.url(), secret)
        await _events(pool, 400)
        started = time.monotonic()
        async with _delivering(pool, webhook_endpoint_concurrency=8, webhook_poll_s=5):
            await receiver.wait_for(400, timeout=30)
            took = time.monotonic() - started
    assert took < 8, took  # at the 5 s poll alone it would take 250 s
