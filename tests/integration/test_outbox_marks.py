"""The outbox mark on PostgreSQL: a claim takes an execution out of the outbox itself, and a
mark made late (the leader marks a while after the confirms) marks only the attempt that
was published."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns


async def _queued(pool: asyncpg.Pool, count: int) -> list[asyncpg.Record]:
    """``count`` one-shot jobs with a queued, unpublished execution each, due now."""
    due = datetime.now(UTC)
    job = JobCreate.model_validate_json(orjson.dumps({
        "name": "o", "schedule": "* * * * * *", "kind": "python", "python": {"function": "m:f"}}))
    jobs = PostgresJobs(pool)
    try:
        for _ in range(count):
            job_id = uuid.uuid4()
            columns = dataclasses.replace(job_columns(job, job_id, due), next_fire_at=None)
            await jobs.create_job(job_id, "default", columns)
    finally:
        await jobs.close()
    await pool.execute("INSERT INTO executions (id, job_id, scheduled_for, epoch)"
                       " SELECT jobsched_execution_id($1), id, $1, 1 FROM jobs", due)
    return await pool.fetch("SELECT id, attempt, scheduled_for FROM executions ORDER BY id")


async def _published(pool: asyncpg.Pool) -> dict[uuid.UUID, bool]:
    rows = await pool.fetch("SELECT id, published_at IS NOT NULL AS marked FROM executions")
    return {r["id"]: r["marked"] for r in rows}


async def test_a_claim_takes_its_execution_out_of_the_outbox(pool: asyncpg.Pool) -> None:
    rows = await _queued(pool, 3)
    leader, worker = PostgresLeaderStore(pool), PostgresWorkerStore(pool)
    claimed = await worker.claim_executions([(rows[0]["id"], rows[0]["attempt"])], "w1", 30.0,
                                            [rows[0]["scheduled_for"]])
    assert [c.id for c in claimed] == [rows[0]["id"]]
    assert await _published(pool) == {rows[0]["id"]: True, rows[1]["id"]: False,
                                      rows[2]["id"]: False}
    assert {d.execution_id for d in await leader.unpublished(datetime.now(UTC), 10)} == {
        rows[1]["id"], rows[2]["id"]}
    # the late mark of all three: the claimed one is left alone, the others are marked
    before = await pool.fetchval("SELECT published_at FROM executions WHERE id = $1",
                                 rows[0]["id"])
    await leader.mark_published([r["id"] for r in rows], [r["scheduled_for"] for r in rows],
                                [1, 1, 1])
    assert all((await _published(pool)).values())
    assert await pool.fetchval("SELECT published_at FROM executions WHERE id = $1",
                               rows[0]["id"]) == before


async def test_a_late_mark_of_an_earlier_attempt_leaves_the_requeued_one_in_the_outbox(
        pool: asyncpg.Pool) -> None:
    rows = await _queued(pool, 2)
    # attempt 1 was published; it failed and was re-queued as attempt 2 (not confirmed yet)
    await pool.execute("UPDATE executions SET attempt = 2 WHERE id = $1", rows[0]["id"])
    await PostgresLeaderStore(pool).mark_published(
        [r["id"] for r in rows], [r["scheduled_for"] for r in rows], [1, 1])
    assert await _published(pool) == {rows[0]["id"]: False, rows[1]["id"]: True}
    # a mark that does not know the attempt (a caller before this change) marks any
    await PostgresLeaderStore(pool).mark_published([rows[0]["id"]], [rows[0]["scheduled_for"]])
    assert await _published(pool) == {rows[0]["id"]: True, rows[1]["id"]: True}
