"""The query KEDA scales workers by runs on the real schema and counts the right rows.

deploy/kubernetes/components/keda-workers/scaledobject.yaml holds SQL that only KEDA's
operator runs, in a cluster this suite never has: here it runs against the migrated
schema, so a renamed column or state fails a test instead of the autoscaler.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import yaml

from jobsched.domain.states import ACTIVE_EXECUTION_STATES, ExecutionState
from tests.helpers import ROOT
from tests.integration.test_postgres import _job as _due_job

SCALED_OBJECT = ROOT / "deploy/kubernetes/components/keda-workers/scaledobject.yaml"
# What the workers have to do now or are doing: the count the pool is sized by.
COUNTED = {ExecutionState.QUEUED, ExecutionState.RUNNING}
STATES = tuple(ExecutionState)
assert COUNTED <= ACTIVE_EXECUTION_STATES


def _query() -> str:
    docs = [d for d in yaml.safe_load_all(SCALED_OBJECT.read_text(encoding="utf-8")) if d]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    return str(trigger["metadata"]["query"])


async def _job(pool: asyncpg.Pool) -> uuid.UUID:
    return await _due_job(pool, datetime.now(UTC))


async def test_scaling_query_counts_queued_and_running(pool: asyncpg.Pool) -> None:
    job_id = await _job(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    expected = 0
    for i, state in enumerate(STATES):
        copies = 3 if state in COUNTED else 2
        expected += copies if state in COUNTED else 0
        for j in range(copies):
            await pool.execute(
                "INSERT INTO executions (job_id, scheduled_for, state, epoch)"
                " VALUES ($1, $2, $3, 1)", job_id, now - timedelta(minutes=i, seconds=j), state)

    assert await pool.fetchval(_query()) == expected == 6


async def test_scaling_query_is_answered_by_an_index(pool: asyncpg.Pool) -> None:
    """KEDA runs it every 15 s against a table of billions of history rows: an index
    (the partial executions_active) must answer it without reading the history."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + _query()))
    assert not re.search(r"Seq Scan on executions", plan), plan
    assert "Index" in plan, plan
