"""Webhook deliveries partitioned by day (migration 016) on a real database: deliveries land
in their event's day, the leader makes the days ahead and drops whole days past retention
(never one holding a delivery still to be made), the workers' claim and record statements
read one partition, and an existing deployment's deliveries are kept across the migration."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import orjson
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.webhooks import DELIVERY_SESSION, PostgresWebhooks
from jobsched.adapters.postgres.webhooks import Q as WEBHOOK_SQL
from jobsched.ports import DeliveryResult, StaleEpochError
from tests.helpers import database_at
from tests.integration.test_partitions import _statements
from tests.integration.test_webhooks_outbox import _endpoint

BATCH = 5_000
RETENTION = timedelta(days=30)


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d")


def _event_id(at: datetime) -> uuid.UUID:
    """An event id of that moment, as webhook_event_id() makes them (UUIDv7: the Unix time in
    milliseconds, then random bits)."""
    return uuid.UUID(int=(int(at.timestamp() * 1000) << 80)
                     | int.from_bytes(os.urandom(10), "big"))


async def _delivery(pool: asyncpg.Pool | asyncpg.Connection, endpoint: uuid.UUID,
                    at: datetime, state: str) -> uuid.UUID:
    event_id = _event_id(at)
    due = None if state in ("succeeded", "exhausted") else at
    await pool.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, data, created_at,"
        " state, next_attempt_at) VALUES ($1, $2, 'execution.succeeded', '{}', $3, $4, $5)",
        endpoint, event_id, at, state, due)
    return event_id


async def _where(pool: asyncpg.Pool, event_id: uuid.UUID) -> str | None:
    table: str | None = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM webhook_deliveries WHERE event_id = $1", event_id)
    return table


async def _partitions(pool: asyncpg.Pool) -> set[str]:
    return {r["partition_name"] for r in await pool.fetch(
        "SELECT partition_name FROM webhook_partitions()")}


async def _events(pool: asyncpg.Pool) -> set[uuid.UUID]:
    return {r["event_id"] for r in await pool.fetch("SELECT event_id FROM webhook_deliveries")}


async def test_deliveries_land_in_their_day_and_the_leader_makes_days_ahead(
        pool: asyncpg.Pool) -> None:
    # the migration made yesterday, today and a week ahead
    now = datetime.now(UTC)
    assert {f"webhook_deliveries_p{_day(now + timedelta(days=n))}" for n in range(-1, 7)} \
        <= await _partitions(pool)
    endpoint = await _endpoint(pool, events=["execution.succeeded"])
    assert await pool.fetchval("SELECT webhook_enqueue('default', 'execution.succeeded',"
                               " '{}', '{}')") == 1
    [event] = await _events(pool)
    assert await _where(pool, event) == f"webhook_deliveries_p{_day(now)}"

    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(5, "leader")
    later = now + timedelta(days=20)
    made = await leader.ensure_partitions(5, later)
    days = [_day(later + timedelta(days=n)) for n in range(-1, 8)]
    # one pass makes both: history's days, then the deliveries' days
    assert made == [f"executions_p{d}" for d in days] + [f"webhook_deliveries_p{d}"
                                                          for d in days]
    assert await leader.ensure_partitions(5, later) == []
    assert await _where(pool, await _delivery(pool, endpoint, later, "pending")) \
        == f"webhook_deliveries_p{_day(later)}"

    # an event with no day of its own waits in DEFAULT and moves when its day is made
    far = now + timedelta(days=90)
    waiting = await _delivery(pool, endpoint, far, "pending")
    assert await _where(pool, waiting) == "webhook_deliveries_default"
    await leader.ensure_partitions(5, far)
    assert await _where(pool, waiting) == f"webhook_deliveries_p{_day(far)}"
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries_default") == 0

    # fenced: a deposed leader makes nothing
    assert await leader.claim_epoch(6, "other")
    with pytest.raises(StaleEpochError):
        await leader.ensure_partitions(5, far + timedelta(days=30))


async def test_retention_drops_old_days_whole_but_never_an_undelivered_delivery(
        pool: asyncpg.Pool) -> None:
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    now = datetime.now(UTC)
    await pool.execute("SELECT webhook_ensure_partitions($1, $2)",
                       now - timedelta(days=45), now - timedelta(days=38))
    endpoint = await _endpoint(pool)
    old = now - timedelta(days=40)
    done = [await _delivery(pool, endpoint, old + timedelta(minutes=n), state)
            for n, state in enumerate(("succeeded", "exhausted", "succeeded"))]
    busy_day = now - timedelta(days=39)
    failed = await _delivery(pool, endpoint, busy_day, "failed")
    delivered_beside_it = await _delivery(pool, endpoint, busy_day + timedelta(minutes=1),
                                          "succeeded")
    # older than any day partition: in DEFAULT, which is purged row by row only
    ancient = now - timedelta(days=60)
    parked = await _delivery(pool, endpoint, ancient, "pending")
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = NULL"
                       " WHERE event_id = $1", parked)
    delivered_ancient = await _delivery(pool, endpoint, ancient + timedelta(minutes=1),
                                        "succeeded")
    recent = await _delivery(pool, endpoint, now - timedelta(hours=1), "succeeded")
    assert await _where(pool, parked) == "webhook_deliveries_default"

    deleted = await leader.purge_deliveries(1, now - RETENTION, BATCH)

    partitions = await _partitions(pool)
    assert f"webhook_deliveries_p{_day(old)}" not in partitions  # dropped whole
    assert f"webhook_deliveries_p{_day(busy_day)}" in partitions  # its failed one stays
    # row by row: the delivered one beside the failed one, and the DEFAULT's delivered one
    assert deleted == 2
    assert await _events(pool) == {failed, parked, recent}
    assert not {*done, delivered_beside_it, delivered_ancient} & await _events(pool)
    # a second pass changes nothing; once the failed one is over, its day goes whole
    assert await leader.purge_deliveries(1, now - RETENTION, BATCH) == 0
    await pool.execute("UPDATE webhook_deliveries SET state = 'exhausted',"
                       " next_attempt_at = NULL WHERE event_id = $1", failed)
    assert await leader.purge_deliveries(1, now - RETENTION, BATCH) == 0
    assert f"webhook_deliveries_p{_day(busy_day)}" not in await _partitions(pool)
    assert await _events(pool) == {parked, recent}


async def test_a_delivery_day_whose_drop_cannot_get_its_lock_waits_whole(
        pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long reader of deliveries: the drop gives up after its lock timeout, and the day is
    not deleted row by row instead; the next pass drops it. A deposed leader drops nothing."""
    from jobsched.adapters.postgres import leader as leader_module

    monkeypatch.setattr(leader_module, "DROP_TRIES", 2)
    monkeypatch.setattr(leader_module, "DROP_RETRY_S", 0.01)
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    await pool.execute("SELECT webhook_ensure_partitions($1, $2)", old, old)
    endpoint = await _endpoint(pool)
    done = await _delivery(pool, endpoint, old, "succeeded")
    async with pool.acquire() as reader:
        reader_tx = reader.transaction()
        await reader_tx.start()
        await reader.fetchval("SELECT count(*) FROM webhook_deliveries")
        assert await leader.purge_deliveries(1, now - RETENTION, BATCH) == 0
        assert f"webhook_deliveries_p{_day(old)}" in await _partitions(pool)
        assert await _events(pool) == {done}
        await reader_tx.rollback()
    assert await leader.claim_epoch(2, "newer")
    with pytest.raises(StaleEpochError):
        await leader.purge_deliveries(1, now - RETENTION, BATCH)
    assert f"webhook_deliveries_p{_day(old)}" in await _partitions(pool)
    assert await leader.purge_deliveries(2, now - RETENTION, BATCH) == 0
    assert f"webhook_deliveries_p{_day(old)}" not in await _partitions(pool)


# -- the delivering workers' statements read one partition ----------------------------------


def _executed(plan: dict[str, Any], under_update: bool = False) -> list[tuple[str, bool]]:
    """(partition, read by the update itself) of every scan of a delivery partition that ran
    (run-time pruning leaves the others 'never executed': zero loops)."""
    name = plan.get("Relation Name", "")
    modify = plan["Node Type"] == "ModifyTable"
    found = [(name, under_update)] if (name.startswith("webhook_deliveries_") and not modify
                                      and plan["Actual Loops"]) else []
    for child in plan.get("Plans", []):
        found += _executed(child, under_update or (
            modify and child.get("Parent Relationship") == "Outer"))
    return found


async def test_claims_and_results_look_deliveries_up_in_their_own_day(
        database_url: str) -> None:
    """With a month of day partitions, a generic plan (as the workers' prepared statements
    get): the claim's update and the recording of results read the delivery's own day's
    partition only. The claim's walk of what is due reads each partition's due index once
    per endpoint (it has no event id to prune on; a past day's due index holds only its
    undelivered deliveries, normally none)."""
    pool = await postgres.create_pool(database_url, server_settings=DELIVERY_SESSION)
    try:
        now = datetime.now(UTC)
        await pool.execute("SELECT webhook_ensure_partitions($1, $2)",
                           now - timedelta(days=30), now)
        endpoint = await _endpoint(pool, events=["execution.succeeded"])
        for days in range(1, 30):
            await _delivery(pool, endpoint, now - timedelta(days=days), "succeeded")
        for _ in range(3):
            await pool.execute("SELECT webhook_enqueue('default', 'execution.succeeded',"
                               " '{}', '{}')")
        today = f"webhook_deliveries_p{_day(now)}"
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE claim AS {WEBHOOK_SQL.claim_deliveries.text}")
            plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim("
                                       "'{}', '{}', 8, 8, 'w', 25)")
            scans = _executed(orjson.loads(plan)[0]["Plan"])
            assert [name for name, updating in scans if updating] == [today]
            assert {name for name, updating in scans if not updating} \
                == await _partitions(pool) | {"webhook_deliveries_default"}
            claimed = await conn.fetch("SELECT endpoint_id, event_id FROM webhook_deliveries"
                                       " WHERE leased_by = 'w' ORDER BY event_id")
            assert len(claimed) == 3
            await conn.execute(f"PREPARE record AS {WEBHOOK_SQL.record_attempts.text}")
            ids = ",".join(str(r["event_id"]) for r in claimed)
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE record("
                f"'{{{endpoint},{endpoint},{endpoint}}}', '{{{ids}}}', '{{1,1,1}}',"
                " '{succeeded,succeeded,succeeded}', '{NULL,NULL,NULL}', '{204,204,204}',"
                " '{NULL,NULL,NULL}', '{\"\",\"\",\"\"}', '{1,1,1}', '{f,f,f}', 'w')")
            assert {name for name, _ in _executed(orjson.loads(plan)[0]["Plan"])} == {today}
            assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries"
                                       " WHERE state = 'succeeded' AND leased_by IS NULL"
                                       " AND event_id = ANY($1)",
                                       [r["event_id"] for r in claimed]) == 3
    finally:
        await pool.close()


# -- an existing deployment: migration 014 -> 016 -------------------------------------------

#: The retention statement of the workers before migration 016 (webhooks.sql
#: purge_deliveries), as an old worker still sends it during the roll.
OLD_WORKER_PURGE = """DELETE FROM webhook_deliveries WHERE ctid IN (
    SELECT x.ctid FROM (SELECT id FROM webhook_endpoints) w
    CROSS JOIN LATERAL (
        SELECT ctid FROM webhook_deliveries
        WHERE endpoint_id = w.id AND event_id < webhook_event_id_floor($1)
        ORDER BY event_id LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) x
    LIMIT $2
)"""


@pytest.fixture
async def database_at_014() -> AsyncIterator[str]:
    """A database at migration 014 (not 015: 016 depends on nothing after 014)."""
    async with database_at(14) as (url, applied):
        assert applied[-1] == "014_partitioned_history.sql"
        yield url


@pytest.mark.parametrize("prepared", [False, True], ids=["in-migration", "prepared-online"])
async def test_migrating_to_016_keeps_every_delivery(database_at_014: str,
                                                      prepared: bool) -> None:
    conn = await asyncpg.connect(database_at_014)
    try:
        endpoint = await conn.fetchval(
            "INSERT INTO webhook_endpoints (namespace, url, events, secret) VALUES"
            " ('default', 'http://127.0.0.1:9/hook', '{execution.succeeded}', 'sealed')"
            " RETURNING id")
        now = datetime.now(UTC)
        old_delivered = await _delivery(conn, endpoint, now - timedelta(days=40), "succeeded")
        old_parked = await _delivery(conn, endpoint, now - timedelta(days=40, minutes=1),
                                     "failed")
        delivered = await _delivery(conn, endpoint, now - timedelta(hours=2), "succeeded")
        pending = await _delivery(conn, endpoint, now - timedelta(minutes=1), "pending")
        if prepared:
            script = (resources.files("jobsched.adapters.postgres") / "prepare"
                      / "016_partitioned_deliveries.sql").read_text()
            for statement in _statements(script):
                await conn.execute(statement)
            # the old version keeps recording meanwhile
            assert await conn.fetchval("SELECT webhook_enqueue('default',"
                                       " 'execution.succeeded', '{}', '{}')") == 1
    finally:
        await conn.close()

    assert "016_partitioned_deliveries.sql" in await postgres.migrate(database_at_014)

    pool = await postgres.create_pool(database_at_014)
    try:
        legacy = await pool.fetchrow("SELECT lower, upper FROM webhook_partitions()"
                                     " WHERE partition_name = 'webhook_deliveries_legacy'")
        assert legacy["lower"] is None and legacy["upper"] > now
        if prepared:  # the cut-over the preparation chose: a week ahead
            assert legacy["upper"] > now + timedelta(days=6)
        events = await _events(pool)
        assert {old_delivered, old_parked, delivered, pending} <= events
        assert len(events) == (5 if prepared else 4)
        for event in events:
            assert await _where(pool, event) == "webhook_deliveries_legacy"
        store = PostgresWebhooks(pool)
        # the primary key still holds across the legacy partition
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute("INSERT INTO webhook_deliveries (endpoint_id, event_id,"
                               " event_type, data) VALUES ($1, $2, 'x', '{}')",
                               endpoint, pending)
        # the workers claim and record the legacy partition's deliveries
        claimed = await store.claim_deliveries("w", 30, limit=10, per_endpoint=10, free={})
        assert {c.event_id for c in claimed} >= {pending, old_parked}
        assert await store.record_attempts(
            [DeliveryResult(endpoint, c.event_id, c.attempt, "succeeded", None, 204, None,
                            "", 1) for c in claimed if c.event_id == pending], "w") == 1
        # an old worker's purge is refused: its ctids would name rows of other partitions
        with pytest.raises(asyncpg.RaiseError, match="partitioned"):
            await pool.execute(OLD_WORKER_PURGE, now - RETENTION, 1000)
        assert await _events(pool) == events
        # new events after the cut-over land in day partitions
        later = legacy["upper"] + timedelta(hours=5)
        leader = PostgresLeaderStore(pool)
        assert await leader.claim_epoch(1, "leader")
        await leader.ensure_partitions(1, later)
        assert await _where(pool, await _delivery(pool, endpoint, later, "pending")) \
            == f"webhook_deliveries_p{_day(later)}"
        # retention purges the legacy partition's old delivered rows, row by row, and keeps
        # the old one still to be made
        assert await leader.purge_deliveries(1, datetime.now(UTC) - RETENTION, BATCH) == 1
        remaining = await _events(pool)
        assert old_delivered not in remaining and old_parked in remaining
        assert await store.get_delivery(endpoint, delivered) is not None
    finally:
        await pool.close()
