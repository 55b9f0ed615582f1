"""Webhooks through failures: a worker killed with ``kill -9`` in the middle of a delivery,
and PostgreSQL restarted while deliveries are in flight and pending. Every committed event
reaches its receiver (at least once, signed), and every delivery ends succeeded.

A deployment of its own (1 scheduler, 1 api, 2 workers) on the suite's private PostgreSQL,
with a secrets key, loopback allowed for the test's receiver and a 2 s delivery timeout
(so a lease is 12 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobsched.crypto import new_key
from jobsched_dev.api_client import ApiClient
from jobsched_dev.devcluster import DevCluster
from tests.chaos.conftest import chaos_deployment
from tests.chaos.harness import PrivatePostgres, immediate, record
from tests.receiver import Receiver

TIMEOUT_S = 2.0
LEASE_S = TIMEOUT_S + 10  # jobsched.worker.webhooks.LEASE_MARGIN_S


@pytest.fixture(scope="module")
def webhook_deployment(private_postgres: PrivatePostgres,
                       request: pytest.FixtureRequest) -> Iterator[DevCluster]:
    env = {"JOBSCHED_SECRETS_KEY": new_key(), "JOBSCHED_HTTP_ALLOW_CIDRS": "127.0.0.0/8",
           "JOBSCHED_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S), "JOBSCHED_WEBHOOK_POLL_S": "0.5"}
    with chaos_deployment(private_postgres.url("webhooks"), "webhooks", request, env=env,
                          schedulers=1, apis=1, workers=2) as cluster:
        yield cluster


@pytest.fixture
async def api(webhook_deployment: DevCluster,
              private_postgres: PrivatePostgres) -> AsyncIterator[ApiClient]:
    if not private_postgres.is_running():
        private_postgres.start()
    for proc in webhook_deployment.processes.values():
        if not proc.alive:
            proc.start()
    webhook_deployment.wait_ready(60)
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, webhook_deployment.api_urls)


async def _endpoint(api: ApiClient, receiver: Receiver, name: str) -> dict[str, Any]:
    status, body, _ = await api.request("POST", "/api/v1/webhooks", json={
        "url": receiver.url(), "events": ["execution.succeeded"], "labels": {"test": name}})
    assert status == 201, body
    receiver.secrets.append(body["secret"])
    return body


async def _deliveries(database_url: str, endpoint_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await conn.fetch("SELECT * FROM webhook_deliveries WHERE endpoint_id = $1",
                                endpoint_id)
    finally:
        await conn.close()


async def _all_succeeded(database_url: str, endpoint_id: str, count: int,
                         timeout: float) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        try:
            rows = await _deliveries(database_url, endpoint_id)
        except (OSError, asyncpg.PostgresError):
            rows = []
        if len(rows) >= count and all(r["state"] == "succeeded" for r in rows):
            return rows
        await asyncio.sleep(0.2)
    seen = [(r["state"], r["attempts"], r["last_error"]) for r in rows]
    raise AssertionError(f"not all {count} delivered: {seen}")


@pytest.mark.timeout(120)
async def test_a_worker_killed_mid_delivery_is_relieved_by_another(
        api: ApiClient, webhook_deployment: DevCluster) -> None:
    """The receiver holds the first attempt open; the worker sending it is killed with
    SIGKILL. Once its lease lapses the other worker sends the same event (same webhook-id),
    and the delivery ends succeeded."""
    async with Receiver(answers=[0]) as receiver:  # the first call hangs
        endpoint = await _endpoint(api, receiver, "kill9")
        await api.create({**immediate("hooked", "chaos_tasks:tick"),
                          "labels": {"test": "kill9"}})
        [first] = await receiver.wait_for(1, timeout=30)
        [row] = await _deliveries(webhook_deployment.database_url, endpoint["id"])
        victim = webhook_deployment[row["leased_by"]]
        killed_at = time.time()
        victim.kill()
        [_, second] = await receiver.wait_for(2, timeout=LEASE_S + 10)
        [row] = await _all_succeeded(webhook_deployment.database_url, endpoint["id"], 1, 10)
    assert second.event_id == first.event_id
    assert first.verified_with and second.verified_with
    assert row["attempts"] == 2 and row["delivered_at"] is not None
    relieved_after = second.at - killed_at
    record("webhook_worker_kill9", redelivered_after_s=round(relieved_after, 2),
           lease_s=LEASE_S)
    assert relieved_after <= LEASE_S + 2, relieved_after


@pytest.mark.timeout(150)
async def test_postgres_restart_loses_no_delivery(
        api: ApiClient, webhook_deployment: DevCluster,
        private_postgres: PrivatePostgres) -> None:
    """Deliveries are in flight (the receiver holds them) and pending when PostgreSQL stops;
    more events are committed after it is back. Every event arrives, signed, and every
    delivery ends succeeded."""
    async with Receiver(default=0) as receiver:  # every call hangs until released
        endpoint = await _endpoint(api, receiver, "pg-restart")
        before = [await api.create({**immediate(f"before-{i}", "chaos_tasks:tick"),
                                    "labels": {"test": "pg-restart"}}) for i in range(20)]
        await receiver.wait_for(10, timeout=30)  # 10+ attempts in flight, the rest pending
        private_postgres.stop("fast")
        receiver.default = 200
        receiver.release.set()  # the attempts in flight are answered while it is down
        await asyncio.sleep(5)
        private_postgres.start()
        back_at = time.time()
        webhook_deployment.wait_ready(60)
        after = [await api.create({**immediate(f"after-{i}", "chaos_tasks:tick"),
                                   "labels": {"test": "pg-restart"}}) for i in range(10)]
        rows = await _all_succeeded(webhook_deployment.database_url, endpoint["id"], 30,
                                    timeout=LEASE_S + 40)
        delivered = {r.json["data"]["job_id"] for r in receiver.received}
    assert {job["id"] for job in before + after} <= delivered
    assert all(r.verified_with for r in receiver.received)
    assert len(rows) == 30
    last = max(r["delivered_at"].timestamp() for r in rows)
    record("webhook_postgres_restart", events=30, arrivals=len(receiver.received),
           redelivered=len(receiver.received) - len(delivered),
           all_delivered_after_restart_s=round(last - back_at, 2))
