"""Webhooks on a real PostgreSQL: the outbox triggers record an event in the transaction
that ends an execution, whatever statement ends it (a worker's result, the reaper, a
cancel, a replace, a re-drive that dies again), filtered by event type, labels and
namespace; and the delivering workers' leases share the work fairly between endpoints."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.webhooks import DELIVERY_SESSION, PostgresWebhooks
from jobsched.adapters.postgres.webhooks import Q as WEBHOOK_SQL
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.domain.firing import TickPlan
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import DeliveryResult, EndpointColumns, FinishedAttempt

ALL = ["execution.succeeded", "execution.dead", "execution.cancelled", "job.completed"]


async def _endpoint(pool: asyncpg.Pool, namespace: str = "default",
                    events: list[str] | None = None, labels: dict[str, str] | None = None,
                    enabled: bool = True) -> uuid.UUID:
    row = await PostgresWebhooks(pool).create_endpoint(namespace, EndpointColumns(
        url="http://127.0.0.1:9/hook", events=events or ALL, labels=labels or {},
        description="", enabled=enabled), b"sealed")
    return uuid.UUID(str(row["id"]))


async def _running(pool: asyncpg.Pool, namespace: str = "default",
                   labels: dict[str, str] | None = None, max_attempts: int = 1,
                   next_fire_at: datetime | None = None, concurrency: str = "allow",
                   lease_s: float = 30) -> tuple[uuid.UUID, uuid.UUID]:
    """A job and one running execution of it (attempt 1, held by worker "w")."""
    async with pool.acquire() as conn:
        job_id = await conn.fetchval(
            "INSERT INTO jobs (namespace, name, kind, payload, schedule, spec, labels, "
            "next_fire_at, max_attempts, concurrency) VALUES ($1, 'j', 'python', '{}', "
            "'immediate', '{}', $2, $3, $4, $5) RETURNING id",
            namespace, labels or {}, next_fire_at, max_attempts, concurrency)
        execution_id = await conn.fetchval(
            "INSERT INTO executions (job_id, scheduled_for, epoch, state, worker, "
            "lease_expires_at, started_at) VALUES ($1, now() - interval '1 hour', 1, "
            "'running', 'w', now() + make_interval(secs => $2), now()) RETURNING id",
            job_id, lease_s)
        await conn.execute("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                           " SELECT id, 1, 'w', scheduled_for FROM executions WHERE id = $1",
                           execution_id)
    return job_id, execution_id


async def _finish(pool: asyncpg.Pool, execution_id: uuid.UUID, state: ExecutionState,
                  attempt: int = 1) -> None:
    outcome = AttemptOutcome.SUCCEEDED if state == ExecutionState.SUCCEEDED \
        else AttemptOutcome.FAILED
    held = await PostgresWorkerStore(pool).finish_attempts([FinishedAttempt(
        execution_id, attempt, state, outcome, 0 if state == ExecutionState.SUCCEEDED else 1,
        None if state == ExecutionState.SUCCEEDED else "boom", "out", 1.0)], "w")
    assert held == {execution_id: state}


async def _deliveries(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM webhook_deliveries ORDER BY created_at, event_type")
    return [dict(r) for r in rows]


async def test_nothing_is_recorded_while_no_endpoint_is_enabled(pool: asyncpg.Pool) -> None:
    await _endpoint(pool, enabled=False)
    _, execution = await _running(pool)
    await _finish(pool, execution, ExecutionState.SUCCEEDED)
    assert await _deliveries(pool) == []


async def test_a_workers_result_records_the_event_and_job_completed(pool: asyncpg.Pool) -> None:
    endpoint = await _endpoint(pool)
    job, execution = await _running(pool, labels={"team": "a"})
    listener = await asyncpg.connect(pool._connect_args[0])  # type: ignore[attr-defined]
    notified: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("jobsched_webhooks", lambda *a: notified.put_nowait(a[-1]))
    try:
        await _finish(pool, execution, ExecutionState.SUCCEEDED)
        await asyncio.wait_for(notified.get(), 5)  # the delivering workers are woken
    finally:
        await listener.close()
    rows = await _deliveries(pool)
    assert [r["event_type"] for r in rows] == ["execution.succeeded", "job.completed"]
    succeeded, completed = rows
    assert {r["endpoint_id"] for r in rows} == {endpoint}
    assert all(r["state"] == "pending" and r["attempts"] == 0 for r in rows)
    data = succeeded["data"]
    assert data["id"] == str(execution) and data["job_id"] == str(job)
    assert data["job_name"] == "j" and data["namespace"] == "default"
    assert data["state"] == "succeeded" and data["attempt"] == 1 and data["error"] is None
    assert data["labels"] == {"team": "a"}
    assert data["finished_at"].endswith("Z") and data["scheduled_for"].endswith("Z")
    assert "output" not in data  # never output, env values or secrets
    assert completed["data"]["job_id"] == str(job)
    assert completed["data"]["state"] == "completed"


async def test_a_retry_is_no_event_and_the_last_failure_is_dead(pool: asyncpg.Pool) -> None:
    await _endpoint(pool)
    _, execution = await _running(pool, max_attempts=2, next_fire_at=datetime.now(UTC))
    await _finish(pool, execution, ExecutionState.RETRYING)
    assert await _deliveries(pool) == []
    await pool.execute("UPDATE executions SET state = 'running', attempt = 2 WHERE id = $1",
                       execution)
    await pool.execute("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                       " SELECT id, 2, 'w', scheduled_for FROM executions WHERE id = $1",
                       execution)
    await _finish(pool, execution, ExecutionState.DEAD, attempt=2)
    rows = await _deliveries(pool)
    assert [r["event_type"] for r in rows] == ["execution.dead"]
    assert rows[0]["data"]["attempt"] == 2 and rows[0]["data"]["error"] == "boom"


async def test_the_reaper_cancel_replace_and_redrive_record_events_too(
        pool: asyncpg.Pool) -> None:
    await _endpoint(pool)
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(7, "leader")
    # the reaper: a lease that lapsed, with no lost attempt left (lost_limit 1)
    _, reaped = await _running(pool, lease_s=-1, next_fire_at=datetime.now(UTC))
    assert [r.state for r in await leader.reap_expired(7, 100, 1)] == [ExecutionState.DEAD]
    # a cancel of the job (DELETE /jobs/{id})
    cancelled_job, cancelled = await _running(pool, next_fire_at=datetime.now(UTC))
    assert await PostgresJobs(pool).cancel_job(cancelled_job, "default")
    # concurrency=replace: a new fire cancels the active run
    replaced_job, replaced = await _running(pool, concurrency="replace",
                                            next_fire_at=datetime.now(UTC))
    await leader.fire_due_jobs(7, datetime.now(UTC), 10,
                               lambda _jobs: TickPlan(replace=[replaced_job]))
    # a re-drive of the dead one, which dies again: a second event, its own id
    assert await PostgresJobs(pool).redrive(reaped, "default") is not None
    await pool.execute("UPDATE executions SET state = 'running', worker = 'w' WHERE id = $1",
                       reaped)
    await pool.execute("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                       " SELECT id, 2, 'w', scheduled_for FROM executions WHERE id = $1",
                       reaped)
    await _finish(pool, reaped, ExecutionState.DEAD, attempt=2)

    rows = await _deliveries(pool)
    by_execution = [(r["event_type"], r["data"]["id"]) for r in rows
                    if r["event_type"].startswith("execution.")]
    assert by_execution == [("execution.dead", str(reaped)),
                            ("execution.cancelled", str(cancelled)),
                            ("execution.cancelled", str(replaced)),
                            ("execution.dead", str(reaped))]
    assert rows[0]["data"]["error"].endswith("lost its lease")
    assert len({r["event_id"] for r in rows}) == len(rows)


async def test_events_types_labels_and_namespaces_filter(pool: asyncpg.Pool) -> None:
    only_dead = await _endpoint(pool, events=["execution.dead"])
    billing = await _endpoint(pool, events=["execution.succeeded"], labels={"team": "billing"})
    billing_prod = await _endpoint(pool, events=["execution.succeeded"],
                                   labels={"team": "billing", "env": "prod"})
    other_namespace = await _endpoint(pool, namespace="other")
    _, plain = await _running(pool)
    _, labelled = await _running(pool, labels={"team": "billing", "env": "dev"})
    _, failing = await _running(pool, labels={"team": "billing"})
    for execution in (plain, labelled):
        await _finish(pool, execution, ExecutionState.SUCCEEDED)
    await _finish(pool, failing, ExecutionState.DEAD)
    got = {(r["endpoint_id"], r["data"]["id"]) for r in await _deliveries(pool)
           if r["event_type"] != "job.completed"}
    assert got == {(only_dead, str(failing)), (billing, str(labelled))}
    assert billing_prod not in {e for e, _ in got} and other_namespace not in {e for e, _ in got}


async def test_one_event_shares_its_id_between_endpoints(pool: asyncpg.Pool) -> None:
    first, second = await _endpoint(pool), await _endpoint(pool)
    _, execution = await _running(pool, next_fire_at=datetime.now(UTC))
    await _finish(pool, execution, ExecutionState.SUCCEEDED)
    rows = await _deliveries(pool)
    assert {r["endpoint_id"] for r in rows} == {first, second}
    assert len({r["event_id"] for r in rows}) == 1


async def test_webhook_enqueue_is_the_call_for_workflow_run_events(pool: asyncpg.Pool) -> None:
    endpoint = await _endpoint(pool, events=["workflow_run.failed"], labels={"team": "data"})
    data = {"id": str(uuid.uuid4()), "workflow_id": str(uuid.uuid4()),
            "workflow_name": "etl", "state": "failed"}
    written = await pool.fetchval("SELECT webhook_enqueue($1, $2, $3, $4)", "default",
                                  "workflow_run.failed", {"team": "data"}, data)
    assert written == 1
    assert await pool.fetchval("SELECT webhook_enqueue($1, $2, $3, $4)", "default",
                               "workflow_run.succeeded", {"team": "data"}, data) == 0
    assert await pool.fetchval("SELECT webhook_enqueue($1, $2, $3, $4)", "default",
                               "workflow_run.failed", {}, data) == 0
    with pytest.raises(asyncpg.RaiseError, match="unknown event type"):
        await pool.fetchval("SELECT webhook_enqueue($1, $2, $3, $4)", "default",
                            "workflow_run.exploded", {}, data)
    [row] = await _deliveries(pool)
    assert row["endpoint_id"] == endpoint and row["data"] == data


async def _enqueue(pool: asyncpg.Pool, count: int, namespace: str = "default") -> None:
    for i in range(count):
        await pool.fetchval("SELECT webhook_enqueue($1, 'execution.succeeded', '{}', $2)",
                            namespace, {"n": i})


async def test_a_claim_takes_a_fair_share_of_each_endpoint(pool: asyncpg.Pool) -> None:
    """One endpoint's backlog never hides another's: each gets at most its free slots."""
    busy = await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 30)
    quiet = await _endpoint(pool, events=["execution.succeeded"])
    # one more event: to both endpoints (31 deliveries for busy, 1 for quiet)
    await pool.execute("SELECT webhook_enqueue('default', 'execution.succeeded', '{}', '{}')")
    store = PostgresWebhooks(pool)
    claimed = await store.claim_deliveries("w1", 30, limit=64, per_endpoint=4, free={})
    assert sorted(d.endpoint_id == quiet for d in claimed) == [False] * 4 + [True]
    # this worker has 1 slot left for the busy endpoint: it gets one more, and no more
    more = await store.claim_deliveries("w1", 30, limit=64, per_endpoint=4, free={busy: 1})
    assert [d.endpoint_id for d in more] == [busy]
    # another worker shares the rest; nothing is claimed twice
    other = await store.claim_deliveries("w2", 30, limit=64, per_endpoint=100, free={})
    keys = [(d.endpoint_id, d.event_id) for d in [*claimed, *more, *other]]
    assert len(keys) == len(set(keys)) == 32


async def test_concurrent_claims_never_share_a_delivery(pool: asyncpg.Pool) -> None:
    await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 40)
    store = PostgresWebhooks(pool)
    results = await asyncio.gather(*(store.claim_deliveries(f"w{i}", 30, limit=10,
                                                            per_endpoint=10, free={})
                                     for i in range(6)))
    keys = [d.event_id for batch in results for d in batch]
    assert len(keys) == len(set(keys)) == 40


async def test_a_lapsed_lease_is_claimed_again_and_the_late_result_dropped(
        pool: asyncpg.Pool) -> None:
    await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 1)
    store = PostgresWebhooks(pool)
    [first] = await store.claim_deliveries("dead-worker", 0.2, limit=10, per_endpoint=10,
                                           free={})
    assert first.attempt == 1
    assert await store.claim_deliveries("w2", 30, limit=10, per_endpoint=10, free={}) == []
    await asyncio.sleep(0.3)
    [again] = await store.claim_deliveries("w2", 30, limit=10, per_endpoint=10, free={})
    assert (again.event_id, again.attempt) == (first.event_id, 2)
    late = DeliveryResult(first.endpoint_id, first.event_id, 1, "succeeded", None, 200, None,
                          "", 3.0)
    assert await store.record_attempts([late], "dead-worker") == 0
    [row] = await _deliveries(pool)
    assert row["state"] == "pending" and row["leased_by"] == "w2"
    assert row["last_error"] == "attempt 1: worker dead-worker stopped before recording it"
    ok = DeliveryResult(again.endpoint_id, again.event_id, 2, "succeeded", None, 204, None,
                        "", 3.0)
    assert await store.record_attempts([ok], "w2") == 1
    [row] = await _deliveries(pool)
    assert row["state"] == "succeeded" and row["delivered_at"] is not None
    assert row["next_attempt_at"] is None and row["leased_by"] is None


async def test_410_disables_the_endpoint_parks_the_rest_and_enabling_resumes(
        pool: asyncpg.Pool) -> None:
    endpoint = await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 3)
    store = PostgresWebhooks(pool)
    claimed = await store.claim_deliveries("w", 30, limit=1, per_endpoint=10, free={})
    gone = DeliveryResult(endpoint, claimed[0].event_id, 1, "failed",
                          datetime.now(UTC) + timedelta(seconds=5), 410,
                          "answered 410 Gone", "", 1.0, gone=True)
    assert await store.record_attempts([gone], "w") == 1
    row = await store.get_endpoint(endpoint, "default")
    assert row is not None and not row["enabled"]
    assert row["disabled_reason"] == "the receiver answered 410 Gone"
    deliveries = await _deliveries(pool)
    assert all(d["next_attempt_at"] is None for d in deliveries)
    assert await store.claim_deliveries("w", 30, limit=10, per_endpoint=10, free={}) == []
    # new events are not recorded for a disabled endpoint
    await _enqueue(pool, 1)
    assert len(await _deliveries(pool)) == 3
    # a redelivery is refused while disabled
    assert await store.redeliver(endpoint, claimed[0].event_id) is None

    def enable(row: Any) -> EndpointColumns:
        return EndpointColumns(row["url"], row["events"], row["labels"], row["description"],
                               True)

    updated = await store.update_endpoint(endpoint, "default", enable)
    assert updated is not None and updated["enabled"] and updated["disabled_reason"] is None
    again = await store.claim_deliveries("w", 30, limit=10, per_endpoint=10, free={})
    assert len(again) == 3


async def test_redeliver_starts_a_fresh_schedule_with_the_same_event_id(
        pool: asyncpg.Pool) -> None:
    endpoint = await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 1)
    store = PostgresWebhooks(pool)
    [claimed] = await store.claim_deliveries("w", 30, limit=1, per_endpoint=1, free={})
    done = DeliveryResult(endpoint, claimed.event_id, 1, "succeeded", None, 200, None, "ok", 1)
    await store.record_attempts([done], "w")
    row = await store.redeliver(endpoint, claimed.event_id)
    assert row is not None and row["state"] == "pending" and row["attempts"] == 0
    [again] = await store.claim_deliveries("w", 30, limit=1, per_endpoint=1, free={})
    assert (again.event_id, again.attempt) == (claimed.event_id, 1)
    assert await store.redeliver(endpoint, uuid.uuid4()) is None
    assert await store.redeliver(uuid.uuid4(), claimed.event_id) is None


async def test_deleting_an_endpoint_deletes_its_log_and_purge_keeps_recent(
        pool: asyncpg.Pool) -> None:
    kept, deleted = await _endpoint(pool), await _endpoint(pool)
    await _enqueue(pool, 3)
    # a delivered event of 40 days ago (its id, time-ordered, says so too)
    await pool.execute("UPDATE webhook_deliveries SET created_at = now() - interval '40 days', "
                       "event_id = webhook_event_id_floor(now() - interval '40 days'), "
                       "state = 'succeeded', next_attempt_at = NULL "
                       "WHERE (endpoint_id, event_id) IN (SELECT endpoint_id, event_id "
                       "FROM webhook_deliveries WHERE endpoint_id = $1 LIMIT 1)", kept)
    store = PostgresWebhooks(pool)
    assert not await store.delete_endpoint(deleted, "another-namespace")
    assert await store.delete_endpoint(deleted, "default")
    assert {r["endpoint_id"] for r in await _deliveries(pool)} == {kept}
    leader = PostgresLeaderStore(pool)  # retention is the leader's (migration 016)
    assert await leader.claim_epoch(1, "leader")
    assert await leader.purge_deliveries(1, datetime.now(UTC) - timedelta(days=30), 100) == 1
    assert len(await _deliveries(pool)) == 2
    oldest = await store.oldest_pending()
    assert oldest is not None and datetime.now(UTC) - oldest < timedelta(minutes=1)


async def test_rotation_keeps_the_previous_secret_signing_for_the_overlap(
        pool: asyncpg.Pool) -> None:
    endpoint = await _endpoint(pool, events=["execution.succeeded"])
    await _enqueue(pool, 2)
    store = PostgresWebhooks(pool)
    assert await store.rotate_secret(endpoint, "other", b"new", 86_400) is None
    row = await store.rotate_secret(endpoint, "default", b"new", 86_400)
    assert row is not None and row["secret"] == b"new" and row["previous_secret"] == b"sealed"
    [one] = await store.claim_deliveries("w", 30, limit=1, per_endpoint=1, free={})
    assert (one.secret, one.previous_secret) == (b"new", b"sealed")
    await pool.execute("UPDATE webhook_endpoints SET previous_secret_until = now()")
    [two] = await store.claim_deliveries("w", 30, limit=1, per_endpoint=1, free={})
    assert (two.secret, two.previous_secret) == (b"new", None)
    assert orjson.loads(orjson.dumps(two.data)) == two.data


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a partition of
    webhook_deliveries (the update itself aside)."""
    found = [plan] if (plan.get("Relation Name", "").startswith("webhook_deliveries_")
                       and plan["Node Type"] != "ModifyTable") else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def _generic_plan(conn: asyncpg.Connection, text: str, args: str) -> list[dict[str, Any]]:
    await conn.execute(f"PREPARE delivery_statement AS {text}")
    try:
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE delivery_statement({args})")
    finally:
        await conn.execute("DEALLOCATE delivery_statement")
    return _scans(orjson.loads(plan)[0]["Plan"])


async def test_claims_and_results_read_deliveries_by_index_whatever_the_plan_was_made_on(
        database_url: str) -> None:
    """A prepared statement's generic plan is made once, early, on a small table without
    statistics (autovacuum off, or not come by yet). The delivering sessions' claim and
    result statements must still read deliveries on an index, the primary key on both its
    columns: not by endpoint_id alone (every delivery of the endpoint per row), nor by a
    scan of the table."""
    pool = await postgres.create_pool(database_url, server_settings=DELIVERY_SESSION)
    try:
        endpoint = await _endpoint(pool, events=["execution.succeeded"])
        await _enqueue(pool, 30)
        event = await pool.fetchval("SELECT event_id FROM webhook_deliveries LIMIT 1")
        async with pool.acquire() as conn:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            claim = await _generic_plan(conn, WEBHOOK_SQL.claim_deliveries.text,
                                        "'{}', '{}', 8, 8, 'w', 25")
            record = await _generic_plan(
                conn, WEBHOOK_SQL.record_attempts.text,
                f"'{{{endpoint}}}', '{{{event}}}', '{{1}}', '{{succeeded}}', '{{NULL}}', "
                "'{204}', '{NULL}', '{\"\"}', '{1}', '{f}', 'w'")
    finally:
        await pool.close()
    # each partition's own indexes (migration 016): <partition>_due and <partition>_pkey
    assert any(s.get("Index Name", "").endswith("_due") for s in claim)
    for scan in claim + record:
        assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan
        if scan["Index Name"].endswith("_pkey"):
            assert "event_id" in scan["Index Cond"], scan
    assert any(s.get("Index Name", "").endswith("_pkey") for s in claim)
    assert record and all(s["Index Name"].endswith("_pkey") for s in record)
