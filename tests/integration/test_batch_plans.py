"""How the statements that join a batch to executions are planned (``-- plan:`` in the
.sql files; see jobsched/adapters/postgres/sql.py): on a day partition filled moments ago,
every row due at one instant, a claim joined to its batch compared every row of the
partition with every batch row."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.sql import load_queries, parse_queries
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns
from jobsched.domain.firing import DueJob

WORKER = load_queries("worker.sql")
LEADER = load_queries("leader.sql")
SETTINGS = "SELECT current_setting('plan_cache_mode')"


async def test_a_statement_gets_its_planner_settings_wherever_it_is_called(
        pool: asyncpg.Pool) -> None:
    queries = parse_queries(f"""
-- generic --
-- plan: generic
{SETTINGS}
-- plain --
{SETTINGS}
""")
    generic, plain = queries["generic"], queries["plain"]
    assert await generic.fetchval(pool) == "force_generic_plan"
    assert await plain.fetchval(pool) == "auto"
    async with pool.acquire() as conn:
        assert await generic.fetchval(conn) == "force_generic_plan"
        assert not conn.is_in_transaction()
        assert await plain.fetchval(conn) == "auto"  # set for that statement alone
        async with conn.transaction():
            assert await generic.fetchval(conn) == "force_generic_plan"
            assert conn.is_in_transaction()  # the caller's transaction, still open
            assert await plain.fetchval(conn) == "auto"  # and planning as usual


@contextlib.asynccontextmanager
async def explained(conn: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """The plans of the statements run on ``conn`` meanwhile (auto_explain, as notices)."""
    plans: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        plans.append(message.message)

    conn.add_log_listener(listen)
    await conn.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                       "SET client_min_messages = log")
    try:
        yield plans
    finally:
        await conn.execute("RESET client_min_messages; RESET auto_explain.log_min_duration")
        conn.remove_log_listener(listen)


async def _herd(pool: asyncpg.Pool, due: datetime, size: int) -> None:
    """``size`` jobs with an execution each, all queued for the same instant, inserted just
    now: the day partition has no statistics about them."""
    job = JobCreate.model_validate_json(orjson.dumps({
        "name": "herd", "schedule": "* * * * * *", "kind": "python",
        "python": {"function": "m:f"}}))
    job_id = uuid.uuid4()
    columns = dataclasses.replace(job_columns(job, job_id, due), next_fire_at=None)
    await PostgresJobs(pool).create_job(job_id, "default", columns)
    async with pool.acquire() as conn:
        await conn.execute("""
            INSERT INTO jobs
            SELECT r.* FROM jobs j, generate_series(2, $2::int) g,
                LATERAL jsonb_populate_record(NULL::jobs, to_jsonb(j) || jsonb_build_object(
                    'id', gen_random_uuid(), 'name', j.name || g)) r
            WHERE j.id = $1""", job_id, size)
        await conn.execute("""
            INSERT INTO executions (id, job_id, scheduled_for, epoch)
            SELECT jobsched_execution_id($1), id, $1, 1 FROM jobs""", due)


async def test_a_claim_of_a_herd_due_at_one_instant_looks_each_row_up_by_key(
        pool: asyncpg.Pool) -> None:
    due = datetime.now(UTC)
    await _herd(pool, due, 20_000)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, attempt FROM executions ORDER BY id LIMIT 600")

        async with explained(conn) as plans:
            claimed = await WORKER.claim_executions.fetch(
                conn, ids=[r["id"] for r in rows], attempts=[r["attempt"] for r in rows],
                scheduled_for=[due] * len(rows), earliest=due, latest=due, worker="w1",
                lease_s=30.0)
    assert len(claimed) == 600
    claim_plan = next(p for p in plans if "Update on executions" in p)
    # Each batch row looked up by key; never every row of the partition compared with
    # every batch row ("Join Filter: ((e.id = m.id) …"), as the custom plan did (4.2 s for
    # this claim, against 23 ms by key).
    assert "Join Filter" not in claim_plan, claim_plan
    assert "Seq Scan on executions" not in claim_plan, claim_plan
    assert "Index Cond: ((id = m.id)" in claim_plan, claim_plan


def _by_key(plan: str, alias: str) -> None:
    """Each batch row looked up by key in the day partition: no scan of the partition,
    hashed, merged or compared pairwise with the batch."""
    assert "Join Filter" not in plan, plan
    assert "Seq Scan on executions" not in plan, plan
    assert "Bitmap Heap Scan on executions" not in plan, plan
    assert f"Index Cond: ((id = {alias}.id)" in plan, plan


@pytest.mark.parametrize("size", [40, 300, 1_500])
async def test_batch_plans_made_while_the_partition_is_small_still_look_rows_up_by_key(
        pool: asyncpg.Pool, size: int) -> None:
    """A connection's generic plan is made at its first execution, for the partition as it
    is then. Made on a partition of a few hundred rows (never analyzed: autovacuum off,
    or not come round yet), the claim hashed a scan of the whole partition (40, 300 rows)
    or compared every row of it with every batch row (1,500 rows: 899,400 rows removed by
    the join filter for a claim of 600), and kept that plan as the partition grew. The
    batch (unnest, LIMIT its length) is estimated at one row, so a probe by key is the
    cheapest plan at any size."""
    due = datetime.now(UTC)
    await _herd(pool, due, size)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, attempt FROM executions ORDER BY id LIMIT 600")
        ids = [r["id"] for r in rows]
        days = [due] * len(ids)

        async with explained(conn) as plans:
            marked = await LEADER.mark_published.execute(conn, ids=ids, scheduled_for=days,
                                                         attempts=[1] * len(ids),
                                                         earliest=due, latest=due)
            claimed = await WORKER.claim_executions.fetch(
                conn, ids=ids, attempts=[r["attempt"] for r in rows], scheduled_for=days,
                earliest=due, latest=due, worker="w1", lease_s=30.0)
            held = await WORKER.heartbeat.fetch(conn, ids=ids, scheduled_for=days,
                                                earliest=due, latest=due, worker="w1",
                                                lease_s=30.0)
            async with conn.transaction():
                finished = await WORKER.finish_executions.fetch(
                    conn, earliest=due, latest=due, ids=ids,
                    attempts=[r["attempt"] for r in rows], states=["succeeded"] * len(ids),
                    outcomes=["succeeded"] * len(ids), exit_codes=[None] * len(ids),
                    errors=[None] * len(ids), outputs=[None] * len(ids),
                    retry_in_s=[None] * len(ids), worker="w1", reasons=[None] * len(ids),
                    started_at=[None] * len(ids), scheduled_for=days)
    assert marked == f"UPDATE {min(size, 600)}"
    assert len(claimed) == len(held) == len(finished) == min(size, 600)
    partitions = await pool.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'executions'::regclass")
    mark, claim, heartbeat, finish = (p for p in plans if "Update on executions" in p)
    _by_key(mark, "m")
    _by_key(claim, "m")
    _by_key(heartbeat, "m")
    _by_key(finish, "r")
    # the jobs its runs complete: by key too, not ANDed with a whole partial index
    assert "Update on jobs" in finish and "jobs_live_by_namespace" not in finish, finish
    # and looks for their other active runs in today's and tomorrow's partitions (and the
    # default one), not in those made further ahead
    probes = finish.count("Index Cond: (job_id = j.id)")
    assert 0 < probes <= 3 < partitions, (partitions, finish)


async def test_a_claim_batch_holding_two_attempts_of_one_execution_claims_the_current(
        pool: asyncpg.Pool) -> None:
    """A stale message (attempt 1) and the current one (attempt 2) of one execution, in one
    claim batch: the current one is claimed, whichever comes first in the batch."""
    due = datetime.now(UTC)
    await _herd(pool, due, 3)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE executions SET attempt = 2")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM executions ORDER BY id")]
        claims = [(ids[0], 1), (ids[0], 2), (ids[1], 2), (ids[1], 1), (ids[2], 1)]
        claimed = await WORKER.claim_executions.fetch(
            conn, ids=[c[0] for c in claims], attempts=[c[1] for c in claims],
            scheduled_for=[due] * len(claims), earliest=due, latest=due, worker="w1",
            lease_s=30.0)
    assert sorted((r["id"], r["attempt"]) for r in claimed) == sorted(
        [(ids[0], 2), (ids[1], 2)])


JOBS = load_queries("jobs.sql")


async def test_one_job_is_read_by_its_primary_key_however_many_its_namespace_holds(
        pool: asyncpg.Pool) -> None:
    """With no statistics on jobs (a fresh table), `namespace = :namespace` beside the id
    read the job through an index that leads with the namespace: every job of the
    namespace for one lookup (GET /jobs/{id} at x0.58 of aaf200a's rate)."""
    due = datetime.now(UTC)
    await _herd(pool, due, 3_000)
    async with pool.acquire() as conn:
        job_id = await conn.fetchval("SELECT id FROM jobs ORDER BY id OFFSET 1500 LIMIT 1")

        async with explained(conn) as plans:
            found = await JOBS.get_job.fetchrow(conn, id=job_id, namespace="default")
            exists = await JOBS.job_exists.fetchval(conn, id=job_id, namespace="default")
            async with conn.transaction():
                locked = await JOBS.lock_job.fetchrow(conn, id=job_id, namespace="default")
            paused = await JOBS.pause_job.fetchval(conn, id=job_id, namespace="default")
            cancelled = await JOBS.cancel_job.fetchval(conn, id=job_id, namespace="default")
            elsewhere = await JOBS.get_job.fetchrow(conn, id=job_id, namespace="other")
    assert found is not None and found["id"] == job_id and exists == 1
    assert locked is not None and paused == cancelled == job_id
    assert elsewhere is None  # the namespace is still checked
    lookups = [p for p in plans if "Query Text" in p and "jobs" in p and ":id" not in p
               and "id = $1" in p]
    assert len(lookups) >= 6, plans
    for plan in lookups:
        assert "jobs_pkey" in plan, plan
        assert "jobs_listing" not in plan and "jobs_live_by_namespace" not in plan, plan



async def test_a_batch_of_due_jobs_reads_the_jobs_it_fires_highest_band_first(
        pool: asyncpg.Pool) -> None:
    """Of 3,000 jobs due at once, a batch of 100 reads its jobs in order from jobs_due
    (band, then time): no sort of every due job for each batch, which made a herd's fires
    quadratic (11 ms per batch of 1,000 of 20,000 due, 237 ms of a 20,000-job burn-down)."""
    due = datetime.now(UTC)
    await _herd(pool, due, 3_000)
    async with pool.acquire() as conn:
        # 20 high jobs due latest of all, 20 low ones due first: the band decides first.
        await conn.execute("""
            UPDATE jobs SET next_fire_at = $1::timestamptz - (n * interval '1 ms'),
                            priority = CASE WHEN n <= 20 THEN 0 WHEN n > 2980 THEN 2 ELSE 1 END
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs) o
            WHERE o.id = jobs.id""", due)
        await conn.execute("ANALYZE jobs")
        await conn.execute("SET auto_explain.log_analyze = on")
        async with explained(conn) as plans, conn.transaction():
            batch = await LEADER.select_due_jobs.fetch(conn, horizon=due, now=due, limit=100)
        await conn.execute("RESET auto_explain.log_analyze")
        expected = await conn.fetch("""
            SELECT id FROM jobs WHERE next_fire_at <= $1
            ORDER BY priority, next_fire_at LIMIT 100""", due)
    assert [r["id"] for r in batch] == [r["id"] for r in expected]
    assert [r["priority"] for r in batch] == [0] * 20 + [1] * 80
    # the leader makes a DueJob of each row by position
    assert list(batch[0].keys()) == [f.name for f in dataclasses.fields(DueJob)]
    plan = next(p for p in plans if "Query Text" in p and "FROM jobs" in p)
    assert "Sort" not in plan and "Seq Scan" not in plan, plan
    # each band read in order from jobs_due: the high one whole (20 rows) and the normal
    # one up to the batch's end (80): two loops of 50 on average; the low one not at all
    scans = [line for line in plan.splitlines() if "Index Scan using jobs_due on jobs" in line]
    assert len(scans) == 1 and "rows=50 loops=2)" in scans[0], plan
