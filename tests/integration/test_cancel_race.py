"""A cancel that races a re-drive of the same job still cancels the re-driven run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.sql import load_queries
from tests.integration.test_postgres import _job

Q = load_queries("jobs.sql")


async def test_a_cancel_waits_for_a_redrive_and_cancels_its_run(pool: asyncpg.Pool) -> None:
    job_id = await _job(pool, datetime.now(UTC))
    execution = await pool.fetchval(
        "INSERT INTO executions (job_id, scheduled_for, epoch, state, finished_at)"
        " VALUES ($1, now(), 1, 'dead', now()) RETURNING id", job_id)
    async with pool.acquire() as redriving:
        transaction = redriving.transaction()
        await transaction.start()
        row = await Q.redrive_dead.fetchrow(redriving, id=execution, namespace="default",
                                            channel="jobsched_wake", refused_kinds=[],
                                            lo=None, hi=None)
        assert row is not None and row["state"] == "queued"  # not committed yet
        cancelling = asyncio.ensure_future(PostgresJobs(pool).cancel_job(job_id, "default"))
        await asyncio.sleep(0.3)
        assert not cancelling.done()  # waits for the re-drive holding the job row
        await transaction.commit()
        assert await asyncio.wait_for(cancelling, 5)
    state = await pool.fetchval("SELECT state FROM executions WHERE id = $1", execution)
    assert state == "cancelled"  # the re-driven run did not escape the cancel
