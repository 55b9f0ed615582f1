"""How the statements that join a batch to executions are planned (``-- plan:`` in the
.sql files; see jobsched/adapters/postgres/sql.py): on a day partition filled moments ago,
every row due at one instant, a claim joined to its batch compared every row of the
partition with every batch row."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.sql import load_queries, parse_queries
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns

WORKER = load_queries("worker.sql")
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
    plans: list[str] = []
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, attempt FROM executions ORDER BY id LIMIT 600")

        def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
            plans.append(message.message)

        conn.add_log_listener(listen)
        await conn.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                           "SET client_min_messages = log")
        try:
            claimed = await WORKER.claim_executions.fetch(
                conn, ids=[r["id"] for r in rows], attempts=[r["attempt"] for r in rows],
                scheduled_for=[due] * len(rows), earliest=due, latest=due, worker="w1",
                lease_s=30.0)
        finally:
            await conn.execute("RESET client_min_messages; "
                               "RESET auto_explain.log_min_duration")
            conn.remove_log_listener(listen)
    assert len(claimed) == 600
    claim_plan = next(p for p in plans if "Update on executions" in p)
    # Each batch row looked up by key; never every row of the partition compared with
    # every batch row ("Join Filter: ((e.id = m.id) …"), as the custom plan did (4.2 s for
    # this claim, against 23 ms by key).
    assert "Join Filter" not in claim_plan, claim_plan
    assert "Seq Scan on executions" not in claim_plan, claim_plan
    assert "Index Cond: ((id = m.id)" in claim_plan, claim_plan


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
