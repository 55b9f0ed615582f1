"""Streaming a running attempt's output on a real database: written only while the
attempt runs on the writing worker, never over a recorded result, never waiting for a
row whose result is being recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import FinishedAttempt
from tests.integration.test_leases import _expire, _held_rows, _one_shot
from tests.integration.test_postgres import _job


async def _outputs(pool: asyncpg.Pool) -> dict[object, str | None]:
    rows = await pool.fetch("SELECT execution_id, output FROM attempts")
    return {r["execution_id"]: r["output"] for r in rows}


async def test_output_so_far_goes_to_running_attempts_of_this_worker_only(
        pool: asyncpg.Pool) -> None:
    store = PostgresWorkerStore(pool)
    running, finished, elsewhere, locked = await _held_rows(pool, 4)
    await store.finish_attempts([FinishedAttempt(finished, 1, ExecutionState.SUCCEEDED,
                                                 AttemptOutcome.SUCCEEDED, 0, None, "final", 0)],
                                "w")
    await pool.execute("UPDATE attempts SET worker = 'other' WHERE execution_id = $1", elsewhere)
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM attempts WHERE execution_id = $1 FOR UPDATE", locked)
        await asyncio.wait_for(store.stream_output(
            [(i, 1, f"so far {n}") for n, i in enumerate((running, finished, elsewhere, locked))],
            "w"), 5)  # does not wait for the locked row
    assert await _outputs(pool) == {running: "so far 0", finished: "final", elsewhere: None,
                                    locked: None}
    await store.stream_output([(running, 2, "a later attempt's")], "w")
    assert (await _outputs(pool))[running] == "so far 0"
    await store.finish_attempts([FinishedAttempt(running, 1, ExecutionState.FAILED,
                                                 AttemptOutcome.FAILED, 1, "x", "the end", 0)],
                                "w")
    await store.stream_output([(running, 1, "too late")], "w")
    assert (await _outputs(pool))[running] == "the end"


async def test_the_output_of_an_attempt_lost_with_its_worker_stays(pool: asyncpg.Pool) -> None:
    """A worker that dies mid-run leaves what it last flushed: the reaper ends the attempt
    ``lost`` and keeps its output."""
    leader, store = PostgresLeaderStore(pool), PostgresWorkerStore(pool)
    now = datetime.now(UTC)
    await _job(pool, now, schedule="immediate")
    await leader.claim_epoch(1, "leader")
    (dispatch,), _, _ = await leader.fire_due_jobs(1, now, 10, _one_shot)
    await store.claim_executions([(dispatch.execution_id, 1)], "w", 30)
    await store.stream_output([(dispatch.execution_id, 1, "step 1 of 3\n")], "w")
    await _expire(pool)
    await leader.reap_expired(1, 10, lost_limit=3)
    row = await pool.fetchrow("SELECT outcome, output FROM attempts")
    assert dict(row) == {"outcome": "lost", "output": "step 1 of 3\n"}
