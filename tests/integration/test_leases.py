"""Leases on a real database: a lost attempt does not use up the job's failure budget but
is bounded apart; a hand-back is free; lease renewals and result batches of one worker
never deadlock; the last run of a one-shot job completes it on every path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.domain.firing import DueJob, FireRecord, JobAdvance, TickPlan
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import FinishedAttempt
from tests.integration.test_postgres import _job


def _one_shot(jobs: list[DueJob]) -> TickPlan:
    return TickPlan(fires=[FireRecord(j.id, j.next_fire_at) for j in jobs],
                    advances=[JobAdvance(j.id, None, 1) for j in jobs])


async def _expire(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE executions SET lease_expires_at = now() - interval '1 s' "
                       "WHERE state = 'running'")


async def test_lost_attempts_do_not_count_but_are_bounded(pool: asyncpg.Pool) -> None:
    leader, worker = PostgresLeaderStore(pool), PostgresWorkerStore(pool)
    now = datetime.now(UTC)
    job_id = await _job(pool, now, schedule="immediate", retry={"max_attempts": 1})
    await leader.claim_epoch(1, "leader")
    (dispatch,), _, _ = await leader.fire_due_jobs(1, now, 10, _one_shot)
    attempt = dispatch.attempt
    for lost in (1, 2):
        (claimed,) = await worker.claim_executions([(dispatch.execution_id, attempt)], "w", 30)
        assert claimed.uncounted_attempts == lost - 1
        await _expire(pool)
        (reaped,) = await leader.reap_expired(1, 10, lost_limit=3)
        assert reaped.state == ExecutionState.RETRYING  # max_attempts=1, yet retried
        (retry,) = await leader.requeue_retries(1, datetime.now(UTC) + timedelta(seconds=1), 10)
        attempt = retry.attempt
    (claimed,) = await worker.claim_executions([(dispatch.execution_id, attempt)], "w", 30)
    assert claimed.attempt == 3 and claimed.uncounted_attempts == 2  # budget untouched
    await _expire(pool)
    (reaped,) = await leader.reap_expired(1, 10, lost_limit=3)
    assert reaped.state == ExecutionState.DEAD
    row = await pool.fetchrow("SELECT state, reason, lost_attempts FROM executions")
    assert row["lost_attempts"] == 3 and "lost 3 times" in row["reason"]
    # the one-shot job's last run ended here: the job completes in the same transaction
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "completed"
    outcomes = await pool.fetch("SELECT outcome FROM attempts ORDER BY attempt")
    assert [o["outcome"] for o in outcomes] == ["lost"] * 3


async def test_a_hand_back_is_free(pool: asyncpg.Pool) -> None:
    leader, worker = PostgresLeaderStore(pool), PostgresWorkerStore(pool)
    now = datetime.now(UTC)
    await _job(pool, now, schedule="immediate")
    await leader.claim_epoch(1, "leader")
    (dispatch,), _, _ = await leader.fire_due_jobs(1, now, 10, _one_shot)
    await worker.claim_executions([(dispatch.execution_id, 1)], "w", 30)
    await worker.hand_back(dispatch.execution_id, 1, "w")
    row = await pool.fetchrow("SELECT state, uncounted_attempts, lost_attempts FROM executions")
    assert dict(row) == {"state": "retrying", "uncounted_attempts": 1, "lost_attempts": 0}


async def _held_rows(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    """``count`` running executions of worker "w", stored in descending id order, so that
    the table's physical order is the reverse of id order."""
    job_id = uuid.uuid4()
    await pool.execute("INSERT INTO jobs (id, name, kind, payload, schedule, spec)"
                       " VALUES ($1, 'h', 'python', '{}', 'immediate', '{}')", job_id)
    ids = sorted((uuid.uuid4() for _ in range(count)), reverse=True)
    now = datetime.now(UTC)
    await pool.executemany(
        "INSERT INTO executions (id, job_id, scheduled_for, epoch, state, worker, attempt,"
        " lease_expires_at) VALUES ($1, $2, $3, 1, 'running', 'w', 1, now())",
        [(i, job_id, now + timedelta(seconds=n)) for n, i in enumerate(ids)])
    await pool.executemany("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                           " VALUES ($1, 1, 'w', $2)",
                           [(i, now + timedelta(seconds=n)) for n, i in enumerate(ids)])
    await pool.execute("ANALYZE executions")
    return sorted(ids)


async def _locks_in_id_order(pool: asyncpg.Pool, statement: object) -> None:
    """While another transaction holds the row with the highest id, ``statement`` must
    already hold the row with the lowest id: it locks in id order, whatever the plan."""
    ids = await _held_rows(pool, 200)
    async with pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        await other.execute("SELECT 1 FROM executions WHERE id = $1 FOR UPDATE", ids[-1])
        running = asyncio.ensure_future(statement(ids))  # type: ignore[operator]
        await asyncio.sleep(0.5)
        assert not running.done(), "it should wait for the row the other transaction holds"
        try:
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute("SELECT 1 FROM executions WHERE id = $1"
                                    " FOR UPDATE NOWAIT", ids[0])
        finally:
            await transaction.rollback()
        await asyncio.wait_for(running, 10)


@pytest.fixture
async def heap_order_pool(pool: asyncpg.Pool,
                          database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Connections on which the planner reads rows in the table's physical order (no
    plain index scans), as it chose for large batches in the soak."""
    await pool.execute(f"ALTER DATABASE {database_url.rsplit('/', 1)[1]} "
                       "SET enable_indexscan = off")
    heap = await postgres.create_pool(database_url)
    yield heap
    await heap.close()


async def test_lease_renewals_lock_rows_in_id_order(pool: asyncpg.Pool,
                                                   heap_order_pool: asyncpg.Pool) -> None:
    """The worker renews its leases and records results on two connections: both lock
    the rows in id order, so the two never deadlock (a renewal in physical order against
    results in id order deadlocked 158 times in a 20-minute soak)."""
    worker = PostgresWorkerStore(heap_order_pool)
    await _locks_in_id_order(pool, lambda ids: worker.heartbeat(ids, "w", 30))


async def test_result_batches_lock_rows_in_id_order(pool: asyncpg.Pool,
                                                   heap_order_pool: asyncpg.Pool) -> None:
    worker = PostgresWorkerStore(heap_order_pool)

    def finish(ids: list[uuid.UUID]) -> object:
        return worker.finish_attempts(
            [FinishedAttempt(i, 1, ExecutionState.SUCCEEDED, AttemptOutcome.SUCCEEDED, 0,
                             None, None, 0) for i in ids], "w")

    await _locks_in_id_order(pool, finish)
