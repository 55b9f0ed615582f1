"""Putting jobs straight into PostgreSQL, bypassing the api, for scenarios about the
scheduler and the workers. Rows look exactly as the api would have stored them: ``spec``
is the job as the api echoes it and ``payload`` the kind's object."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from jobsched.adapters.postgres.listen import WAKE_CHANNEL
from jobsched.api.models import JobCreate
from jobsched.domain.priority import Priority
from jobsched_dev.bench.tasks import NOOP

JOB_COLUMNS = ("id", "name", "kind", "payload", "schedule", "timezone", "next_fire_at",
               "max_attempts", "backoff_s", "max_backoff_s", "timeout_s", "labels", "spec",
               "created_at", "updated_at", "priority")

# Jobs submitted while a steady load runs: ``clock_timestamp()`` so each batch carries its
# own submit time, and due at once, as an ``immediate`` job submitted through the api is.
INSERT_IMMEDIATE_JOBS = """
INSERT INTO jobs (name, kind, payload, schedule, next_fire_at, timeout_s, labels, spec,
                  created_at, updated_at)
SELECT $1, 'python', $2, 'immediate', clock_timestamp(), $3, $4, $5,
       clock_timestamp(), clock_timestamp()
FROM generate_series(1, $6)
"""

# Every fire of the run with the job's submit time, in one read after the run.
SELECT_FIRES = """
SELECT e.job_id, e.scheduled_for, e.state, e.attempt, e.queued_at, e.published_at,
       e.started_at, e.finished_at, j.created_at AS submitted_at, e.priority,
       (SELECT count(*) FROM attempts a
        WHERE a.execution_id = e.id AND a.scheduled_for = e.scheduled_for) AS attempts
FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE j.name = $1
"""

COUNT_FINISHED = """
SELECT count(*) FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE j.name = $1 AND e.finished_at IS NOT NULL
"""

# Finished, not started: the claim's started_at is provisional (a run fired ahead is
# claimed before it is due); the worker's real start comes with its result.
COUNT_FINISHED_BETWEEN = """
SELECT count(*) FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE j.name = $1 AND e.scheduled_for >= $2 AND e.scheduled_for < $3
  AND e.finished_at IS NOT NULL
"""

DUPLICATE_FIRES = """
SELECT coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM executions e JOIN jobs j ON j.id = e.job_id
    WHERE j.name = $1 GROUP BY e.job_id, e.scheduled_for HAVING count(*) > 1
) d
"""


def job_spec(name: str, schedule: str, function: str = NOOP, priority: str = "normal"
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, payload) of a no-op python job, validated and shaped by the api's own model."""
    job = JobCreate.model_validate({"name": name, "schedule": schedule, "kind": "python",
                                    "python": {"function": function}, "priority": priority})
    return job.model_dump(mode="json", exclude_none=True), job.payload()


def job_rows(name: str, schedule: str, next_fire_at: datetime | None, count: int,
             now: datetime | None = None, function: str = NOOP,
             priority: str = "normal") -> list[tuple[Any, ...]]:
    spec, payload = job_spec(name, schedule, function, priority)
    now = now or datetime.now(UTC)
    rank = Priority(priority).rank
    return [(uuid.uuid4(), name, "python", payload, schedule, "UTC", next_fire_at, 1, 2.0,
             300.0, 300.0, {}, spec, now, now, rank) for _ in range(count)]


async def copy_jobs(conn: asyncpg.Connection, rows: list[tuple[Any, ...]],
                    chunk: int = 50_000) -> None:
    """COPY the rows in chunks (one transaction each), then wake the scheduler."""
    for start in range(0, len(rows), chunk):
        await conn.copy_records_to_table("jobs", records=rows[start:start + chunk],
                                         columns=JOB_COLUMNS)
    await notify(conn)


async def copy_many_jobs(conn: asyncpg.Connection, name: str, schedule: str,
                         next_fire_at: datetime | None, count: int,
                         chunk: int = 50_000) -> None:
    """COPY ``count`` identical jobs without holding them all in memory at once."""
    left = count
    while left > 0:
        rows = job_rows(name, schedule, next_fire_at, min(chunk, left))
        await conn.copy_records_to_table("jobs", records=rows, columns=JOB_COLUMNS)
        left -= len(rows)
    await notify(conn)


async def insert_immediate(conn: asyncpg.Connection, name: str, count: int,
                           function: str = NOOP) -> None:
    """Submit ``count`` immediate no-op jobs in one statement and wake the scheduler."""
    spec, payload = job_spec(name, "immediate", function)
    async with conn.transaction():
        await conn.execute(INSERT_IMMEDIATE_JOBS, name, payload, 300.0, {}, spec, count)
        await conn.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, "job")


async def notify(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, "bench")


def next_whole_second(after: datetime, lead_s: float) -> datetime:
    at = after + timedelta(seconds=lead_s)
    return at.replace(microsecond=0) + timedelta(seconds=1)
