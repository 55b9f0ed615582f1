"""Execution history for ``jobsched bench scale --history N``: N finished executions (each
with one attempt) spread evenly over the last DAYS days, written day by day with INSERT ...
SELECT (each statement fills one day partition), as the leader's retention would find them
after a month of fires; and a retention pass timed against the running leader's epoch.

The history belongs to HISTORY_JOBS completed jobs of namespace ``default`` (the bench
api's token), so the api's GET /api/v1/executions/{id} and GET /api/v1/jobs/{id}/executions
can be measured on it."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from jobsched.adapters import postgres
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched_dev.bench.cluster import Services, drop_database
from jobsched_dev.bench.load import job_spec
from jobsched_dev.bench.tasks import NOOP

HISTORY_JOBS = 1_000
DAYS = 30
SAMPLE = 2_000  # execution ids kept for the api's GETs

WRITTEN_JOBS = "SELECT id FROM jobs WHERE name = 'bench-history' ORDER BY id"

# One day's share: execution i of the day belongs to job i % jobs, at day + i * step;
# ids as the roles make them (migration 015).
INSERT_DAY = """
INSERT INTO executions (id, job_id, scheduled_for, state, attempt, queued_at, published_at,
                        started_at, finished_at, epoch, exit_code, output)
SELECT jobsched_execution_id(s), ($1::uuid[])[1 + i % cardinality($1::uuid[])], s,
       'succeeded', 1, s, s,
       s + interval '5 ms', s + interval '20 ms', 1, 0, 'ok'
FROM generate_series(0, $4 - 1) AS i
CROSS JOIN LATERAL (SELECT $2::timestamptz + i * $3::interval AS s) t
"""

INSERT_DAY_ATTEMPTS = """
INSERT INTO attempts (execution_id, attempt, worker, started_at, finished_at, outcome,
                      exit_code, output, scheduled_for)
SELECT id, 1, 'bench-history', started_at, finished_at, 'succeeded', 0, 'ok', scheduled_for
FROM executions
WHERE scheduled_for >= $1 AND scheduled_for < $2 AND job_id = ANY($3::uuid[])
"""


async def preload_history(conn: asyncpg.Connection, count: int, days: int = DAYS,
                          jobs: int = HISTORY_JOBS) -> dict[str, Any]:
    """Write ``count`` finished executions over the ``days`` days before now; returns the
    seconds taken, the jobs and a sample of the executions (ids) for the api to read."""
    if count <= 0:
        return {"count": 0, "preload_s": 0.0, "job_ids": [], "execution_ids": []}
    job_ids = [r["id"] for r in await conn.fetch(WRITTEN_JOBS)]
    if job_ids:  # a copy of history_template's database: written already
        return {"count": count, "preload_s": 0.0, "job_ids": [str(j) for j in job_ids],
                "execution_ids": await _sample(conn, job_ids)}
    began = time.perf_counter()
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    await conn.execute("SELECT history_ensure_partitions($1, $2)",
                       start - timedelta(days=1), now + timedelta(days=7))
    jobs = min(jobs, count)
    spec, payload = job_spec("bench-history", "immediate", NOOP)
    job_ids = [uuid.uuid4() for _ in range(jobs)]
    await conn.executemany(
        "INSERT INTO jobs (id, name, kind, payload, schedule, state, spec)"
        " VALUES ($1, 'bench-history', 'python', $2, 'immediate', 'completed', $3)",
        [(job_id, payload, spec) for job_id in job_ids])
    step = timedelta(days=days) / count
    per_day = max(1, round(timedelta(days=1) / step))
    written = 0
    day = start
    while written < count:
        n = min(per_day, count - written)
        await conn.execute(INSERT_DAY, job_ids, day, step, n)
        await conn.execute(INSERT_DAY_ATTEMPTS, day, day + n * step, job_ids)
        written += n
        day += n * step
    # As a month-old history is: vacuumed and analysed (else the insert-triggered
    # autovacuum of 2 x N fresh rows would run during the measurement).
    await conn.execute("VACUUM (ANALYZE) executions")
    await conn.execute("VACUUM (ANALYZE) attempts")
    return {"count": count, "preload_s": time.perf_counter() - began,
            "job_ids": [str(j) for j in job_ids],
            "execution_ids": await _sample(conn, job_ids)}


async def _sample(conn: asyncpg.Connection, job_ids: list[uuid.UUID]) -> list[str]:
    sample = await conn.fetch(
        "SELECT id FROM executions TABLESAMPLE SYSTEM (1) WHERE job_id = ANY($1::uuid[])"
        " LIMIT $2", job_ids, SAMPLE)
    if not sample:
        sample = await conn.fetch("SELECT id FROM executions WHERE job_id = ANY($1::uuid[])"
                                  " LIMIT $2", job_ids, SAMPLE)
    return [str(r["id"]) for r in sample]


@contextlib.asynccontextmanager
async def history_template(services: Services, count: int) -> AsyncIterator[dict[str, Any]]:
    """A migrated database holding ``count`` executions of history, written once for the
    runs that copy it (``Options.template``): ``{"database": name, "preload_s": s}``;
    dropped afterwards. Writing 5,000,000 took 132 s, so three runs each writing their
    own spent minutes on it, and 20,000,000 would take ~40 minutes."""
    name = f"jobsched_history_{uuid.uuid4().hex[:8]}"
    url = services.database_url(name)
    await postgres.create_database(url)
    try:
        await postgres.migrate(url)
        pool = await postgres.create_pool(url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                loaded = await preload_history(conn, count)
        finally:
            await pool.close()
        yield {"database": name, "preload_s": loaded["preload_s"]}
    finally:
        await drop_database(services, name)


async def retention_pass(pool: asyncpg.Pool, retention: timedelta) -> dict[str, Any]:
    """One retention pass as the leader runs it (fenced by the running leader's epoch):
    its wall time, the partitions it dropped and the rows it deleted one by one."""
    epoch = await pool.fetchval("SELECT epoch FROM leader WHERE id = 1")
    store = PostgresLeaderStore(pool)
    before = datetime.now(UTC) - retention
    partitions_before = await pool.fetchval(
        "SELECT count(*) FROM history_partitions() WHERE table_name = 'executions'")
    began = time.perf_counter()
    deleted = await store.purge_history(epoch, before, 5_000)
    seconds = time.perf_counter() - began
    partitions_after = await pool.fetchval(
        "SELECT count(*) FROM history_partitions() WHERE table_name = 'executions'")
    return {"seconds": seconds, "partitions_dropped": partitions_before - partitions_after,
            "rows_deleted": deleted, "at": datetime.now(UTC).isoformat()}
