"""History retention on a real database: age limit, per-job limits, fenced by epoch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.ports import StaleEpochError
from tests.integration.test_postgres import _job as _due_job

BATCH = 5_000


async def _job(pool: asyncpg.Pool, **extra: object) -> uuid.UUID:
    return await _due_job(pool, datetime.now(UTC), **extra)


async def purge_history(pool: asyncpg.Pool, epoch: int, now: datetime,
                        retention: timedelta) -> int:
    return await PostgresLeaderStore(pool).purge_history(epoch, now - retention, BATCH)


async def _execution(pool: asyncpg.Pool, job_id: uuid.UUID, at: datetime, state: str,
                     finished: datetime | None) -> None:
    await pool.execute(
        "INSERT INTO executions (job_id, scheduled_for, state, finished_at, epoch)"
        " VALUES ($1, $2, $3, $4, 1)", job_id, at, state, finished)


async def test_age_and_per_job_limits(pool: asyncpg.Pool) -> None:
    await PostgresLeaderStore(pool).claim_epoch(1, "leader")
    now = datetime.now(UTC).replace(microsecond=0)
    limited = await _job(pool, history={"succeeded": 2, "failed": 1})
    unlimited = await _job(pool)
    for i in range(5):
        at = now - timedelta(minutes=i)
        await _execution(pool, limited, at, "succeeded", at)
        await _execution(pool, limited, at - timedelta(seconds=30), "dead", at)
        await _execution(pool, unlimited, at, "succeeded", at)
    old = now - timedelta(days=40)
    await _execution(pool, unlimited, old, "succeeded", old)
    await _execution(pool, unlimited, now + timedelta(hours=1), "queued", None)

    deleted = await purge_history(pool, 1, now, timedelta(days=30))
    assert deleted == 1 + 3 + 4  # the 40-day-old one, 3 succeeded and 4 dead over limits
    rows = await pool.fetch("SELECT job_id, state, scheduled_for FROM executions")
    kept = {(r["job_id"], r["state"]): [] for r in rows}
    for r in rows:
        kept[(r["job_id"], r["state"])].append(r["scheduled_for"])
    assert sorted(kept[(limited, "succeeded")]) == [now - timedelta(minutes=1), now]
    assert kept[(limited, "dead")] == [now - timedelta(seconds=30)]
    assert len(kept[(unlimited, "succeeded")]) == 5 and len(kept[(unlimited, "queued")]) == 1
    assert await purge_history(pool, 1, now, timedelta(days=30)) == 0


async def test_a_deposed_leader_cannot_purge(pool: asyncpg.Pool) -> None:
    await PostgresLeaderStore(pool).claim_epoch(2, "new")
    with pytest.raises(StaleEpochError):
        await purge_history(pool, 1, datetime.now(UTC), timedelta(days=30))
