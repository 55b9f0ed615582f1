"""The PostgreSQL adapter against a real server: migrations, fencing, one execution per fire,
claims that only one worker can win."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.migrate import migration_files
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.adapters.postgres.worker import Q as wq
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns
from jobsched.domain.firing import DueJob, FireRecord, JobAdvance, TickPlan
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import ClaimedExecution, FinishedAttempt, StaleEpochError


async def _job(pool: asyncpg.Pool, due: datetime, schedule: str = "* * * * * *",
               **extra: object) -> uuid.UUID:
    """A job of namespace "default" whose next fire is ``due``."""
    job = JobCreate.model_validate_json(orjson.dumps({
        "name": "j", "schedule": schedule, "kind": "python", "python": {"function": "m:f"},
        **extra}))
    job_id = uuid.uuid4()
    columns = dataclasses.replace(job_columns(job, job_id, due), next_fire_at=due)
    row, _ = await PostgresJobs(pool).create_job(job_id, "default", columns)
    return uuid.UUID(str(row["id"]))


def _plan(jobs: list[DueJob]) -> TickPlan:
    return TickPlan(
        fires=[FireRecord(j.id, j.next_fire_at) for j in jobs],
        advances=[JobAdvance(j.id, j.next_fire_at + timedelta(seconds=1), 1) for j in jobs],
        replace=[],
    )


async def test_migrate_is_idempotent_and_safe_concurrently(database_url: str) -> None:
    # The template already applied everything: running again, twice at once, applies nothing.
    results = await asyncio.gather(postgres.migrate(database_url), postgres.migrate(database_url))
    assert results == [[], []]
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [
            version for version, _, _ in migration_files()]
    finally:
        await conn.close()


async def test_fresh_database_migrates_under_the_lock(template_db: str) -> None:
    from tests.helpers import PG_ADMIN_URL, db_url, drop_database

    name = f"jobsched_m_{uuid.uuid4().hex[:8]}"
    url = db_url(name)
    assert await postgres.create_database(url) is True
    assert await postgres.create_database(url) is False
    try:
        applied = await asyncio.gather(*(postgres.migrate(url) for _ in range(3)))
        assert sorted(len(a) for a in applied) == [0, 0, len(migration_files())]
    finally:
        assert PG_ADMIN_URL
        await drop_database(name)


async def test_epoch_only_grows(pool: asyncpg.Pool) -> None:
    store = PostgresLeaderStore(pool)
    assert await store.claim_epoch(5, "a")
    assert not await store.claim_epoch(5, "b")
    assert not await store.claim_epoch(3, "b")
    assert await store.claim_epoch(6, "b")
    leader = await PostgresJobs(pool).current_leader()
    assert leader is not None and leader.epoch == 6 and leader.holder == "b"


async def test_deposed_leader_cannot_fire(pool: asyncpg.Pool) -> None:
    store = PostgresLeaderStore(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    job_id = await _job(pool, now)
    assert await store.claim_epoch(1, "old")
    assert await store.claim_epoch(2, "new")
    with pytest.raises(StaleEpochError):
        await store.fire_due_jobs(1, now, 100, _plan)
    with pytest.raises(StaleEpochError):
        await store.requeue_retries(1, now, 100)
    assert await pool.fetchval("SELECT count(*) FROM executions") == 0
    dispatches, due, _ = await store.fire_due_jobs(2, now, 100, _plan)
    assert due == 1 and [d.job_id for d in dispatches] == [job_id]
    assert await pool.fetchval("SELECT epoch FROM executions") == 2


async def test_a_fire_creates_exactly_one_execution(pool: asyncpg.Pool) -> None:
    store = PostgresLeaderStore(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    job_id = await _job(pool, now)
    await store.claim_epoch(1, "leader")
    first, _, _ = await store.fire_due_jobs(1, now, 100, _plan)
    assert len(first) == 1
    # The same fire again (say a leader re-ran a tick): the unique key absorbs it.
    await pool.execute("UPDATE jobs SET next_fire_at = $1", now)
    again, due, _ = await store.fire_due_jobs(1, now, 100, _plan)
    assert due == 1 and again == []
    assert await pool.fetchval(
        "SELECT count(*) FROM executions WHERE job_id = $1 AND scheduled_for = $2", job_id, now
    ) == 1


async def test_concurrent_fire_transactions_do_not_duplicate(pool: asyncpg.Pool) -> None:
    store = PostgresLeaderStore(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    for _ in range(200):
        await _job(pool, now)
    await store.claim_epoch(1, "leader")
    results = await asyncio.gather(*(store.fire_due_jobs(1, now, 50, _plan) for _ in range(8)))
    assert sum(len(d) for d, _, _ in results) == 200
    assert await pool.fetchval("SELECT count(*) FROM executions") == 200


async def test_a_claim_selects_the_fields_of_a_claimed_execution_in_their_order(
        pool: asyncpg.Pool) -> None:
    # PostgresWorkerStore builds ClaimedExecution from each row by position.
    store = PostgresLeaderStore(pool)
    now = datetime.now(UTC)
    job_id = await _job(pool, now)
    await store.claim_epoch(1, "leader")
    (dispatch,), _, _ = await store.fire_due_jobs(1, now, 100, _plan)
    rows = await wq.claim_executions.fetch(
        pool, ids=[dispatch.execution_id], attempts=[1], scheduled_for=[now], earliest=now,
        latest=now, worker="w", lease_s=30)
    assert list(rows[0].keys()) == [f.name for f in dataclasses.fields(ClaimedExecution)]
    claimed = ClaimedExecution(*rows[0])
    assert (claimed.id, claimed.job_id, claimed.attempt) == (dispatch.execution_id, job_id, 1)


async def test_a_job_deleted_by_hand_takes_its_executions_and_attempts(
        pool: asyncpg.Pool) -> None:
    # What executions' foreign key did with ON DELETE CASCADE until migration 019.
    store, workers = PostgresLeaderStore(pool), PostgresWorkerStore(pool)
    now = datetime.now(UTC)
    job_id = await _job(pool, now)
    other = await _job(pool, now)
    await store.claim_epoch(1, "leader")
    dispatches, _, _ = await store.fire_due_jobs(1, now, 100, _plan)
    assert len(dispatches) == 2
    await workers.claim_executions([(d.execution_id, d.attempt) for d in dispatches], "w", 30)
    assert await pool.fetchval("SELECT count(*) FROM attempts") == 2
    await pool.execute("DELETE FROM jobs WHERE id = $1", job_id)
    assert await pool.fetchval("SELECT count(*) FROM executions WHERE job_id = $1", job_id) == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM executions WHERE job_id = $1", other) == 1
    assert await pool.fetchval("SELECT count(*) FROM attempts") == 1


async def test_only_one_claim_wins_and_results_need_the_claim(pool: asyncpg.Pool) -> None:
    store = PostgresLeaderStore(pool)
    workers = PostgresWorkerStore(pool)
    now = datetime.now(UTC)
    await _job(pool, now)
    await store.claim_epoch(1, "leader")
    (dispatch,), _, _ = await store.fire_due_jobs(1, now, 100, _plan)
    claim = [(dispatch.execution_id, dispatch.attempt)]
    results = await asyncio.gather(*(workers.claim_executions(claim, f"w{i}", 30)
                                     for i in range(5)))
    winners = [i for i, rows in enumerate(results) if rows]
    assert len(winners) == 1
    winner = f"w{winners[0]}"
    result = FinishedAttempt(dispatch.execution_id, 1, ExecutionState.SUCCEEDED,
                             AttemptOutcome.SUCCEEDED, 0, None, "ok", 0)
    assert await workers.finish_attempts([result], "someone-else") == {}
    assert await workers.finish_attempts([result], winner) == {
        dispatch.execution_id: ExecutionState.SUCCEEDED}
    assert await workers.claim_executions(claim, "late", 30) == []
    attempts = await pool.fetch("SELECT worker, outcome FROM attempts")
    assert [(a["worker"], a["outcome"]) for a in attempts] == [(winner, "succeeded")]
