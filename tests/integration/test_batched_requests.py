"""Creates and lookups of concurrent api requests share one statement (PostgresJobs)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from jobsched.adapters.postgres.jobs import QUOTA_LOCK_MARGIN, PostgresJobs
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns
from jobsched.batching import Batcher
from jobsched.ports import JobColumns, QuotaExceeded


def _columns(name: str, **change: Any) -> tuple[uuid.UUID, JobColumns]:
    job = JobCreate.model_validate_json(orjson.dumps({
        "name": name, "schedule": "0 0 1 1 *", "kind": "python", "python": {"function": "m:f"},
        "labels": {"n": name}}))
    job_id = uuid.uuid4()
    now = datetime.now(UTC)
    columns = dataclasses.replace(job_columns(job, job_id, now),
                                  next_fire_at=now + timedelta(hours=1), **change)
    return job_id, columns


def _sizes(batcher: Batcher[Any, Any]) -> list[int]:
    """Records the size of every batch the batcher flushes from now on."""
    sizes: list[int] = []
    flush = batcher._flush

    async def recorded(items: list[Any]) -> Sequence[Any]:
        sizes.append(len(items))
        return await flush(items)

    batcher._flush = recorded
    return sizes


async def test_concurrent_creates_go_in_few_statements_and_each_gets_its_row(
        pool: asyncpg.Pool) -> None:
    jobs = PostgresJobs(pool)
    sizes = _sizes(jobs._creates)
    made = [_columns(f"job-{i}") for i in range(150)]
    try:
        results = await asyncio.gather(*(jobs.create_job(job_id, "team-a", columns)
                                          for job_id, columns in made))
    finally:
        await jobs.close()
    assert sum(sizes) == 150 and max(sizes) > 1 and len(sizes) < 150
    for (job_id, columns), (row, replayed) in zip(made, results, strict=True):
        assert not replayed
        assert row["id"] == job_id and row["name"] == columns.name
        assert row["labels"] == {"n": columns.name} and row["namespace"] == "team-a"
        assert row["next_fire_at"] == columns.next_fire_at and row["state"] == "active"
    stored = await pool.fetch("SELECT id, name FROM jobs WHERE namespace = 'team-a'")
    assert {(r["id"], r["name"]) for r in stored} == {(i, c.name) for i, c in made}


RICH = {
    "name": "rich-é", "schedule": "*/5 * * * *", "timezone": "Europe/Berlin", "kind": "http",
    "http": {"method": "POST", "url": "https://example.com/hook", "body": "é\u2028\"\\x",
             "headers": {"Authorization": {"secret": "TOKEN"}}},
    "labels": {"team": "billing", "tier": "1"},
    "retry": {"max_attempts": 3, "backoff_s": 1.5, "max_backoff_s": 0.1},
    "start_at": "2031-01-01T00:00:00.000001+23:59", "end_at": "2032-01-01T00:00:00-23:59",
    "jitter_s": 2.25, "priority": "high", "max_runs": 7, "timeout_s": 1e-3,
    "starting_deadline_s": 0.30000000000000004, "history": {"succeeded": 3, "failed": 0},
    "misfire": "skip", "max_catchup": 4, "concurrency": "forbid",
}
# jsonb stores 1e16 as 10000000000000000 and -0.0 as 0: the answer must say what it stored.
PLAIN = {"name": "plain", "schedule": "0 0 1 1 *", "kind": "python", "jitter_s": -0.0,
         "python": {"function": "m:f", "args": {"x": [1, 2.5, None, "é"], "big": 2**62,
                                                 "float": 1e16, "zero": -0.0}}}


@pytest.mark.parametrize("spec", [RICH, PLAIN], ids=["rich", "plain"])
async def test_a_batched_create_stores_and_answers_what_a_keyed_one_does(
        pool: asyncpg.Pool, spec: dict[str, Any]) -> None:
    # The batch travels as one JSON document, a keyed create as typed parameters: every
    # stored column must be the same, and each create's answer the row as stored.
    job = JobCreate.model_validate_json(orjson.dumps(spec))
    now = datetime.now(UTC)
    due = (now + timedelta(days=400)).replace(microsecond=123457)
    jobs = PostgresJobs(pool)
    made = []
    try:
        for key in (None, "k-" + spec["name"]):
            job_id = uuid.uuid4()
            # (the same next fire for both: a job's jitter offset follows from its id)
            columns = dataclasses.replace(job_columns(job, job_id, now), next_fire_at=due)
            row, _ = await jobs.create_job(job_id, "team-e", columns,
                                           idempotency_key=key, digest=b"d")
            made.append((job_id, row))
    finally:
        await jobs.close()
    stored = [dict(await pool.fetchrow(
        "SELECT *, spec::text AS spec_text, payload::text AS payload_text FROM jobs "
        "WHERE id = $1", job_id)) for job_id, _ in made]
    differ = {"id", "idempotency_key", "idempotency_digest", "created_at", "updated_at"}
    batched, keyed = ({k: v for k, v in row.items() if k not in differ} for row in stored)
    assert batched == keyed
    assert batched["start_at"] == job.start_at and batched["timeout_s"] == job.timeout_s
    assert batched["next_fire_at"] == due
    for (_, answered), row in zip(made, stored, strict=True):
        assert {k: answered[k] for k in row if k in answered} == {
            k: row[k] for k in row if k in answered}
        # as JSON, byte for byte: key order, 1e16 against 10000000000000000, -0.0 against 0
        assert orjson.dumps(answered["spec"]) == orjson.dumps(row["spec"])
        assert {"id", "namespace", "state", "next_fire_at", "created_at", "updated_at",
                "spec"} <= answered.keys()


async def test_a_bad_create_fails_alone_and_the_rest_of_its_batch_is_stored(
        pool: asyncpg.Pool) -> None:
    jobs = PostgresJobs(pool)
    sizes = _sizes(jobs._creates)
    made = [_columns(f"job-{i}") for i in range(20)]
    bad_id, bad = _columns("bad", kind="bogus")  # breaks jobs_kind_check
    made.insert(7, (bad_id, bad))
    try:
        results = await asyncio.gather(
            *(jobs.create_job(job_id, "team-b", columns) for job_id, columns in made),
            return_exceptions=True)
    finally:
        await jobs.close()
    assert max(sizes) > 1  # the bad row was in a batch with others
    assert isinstance(results[7], asyncpg.CheckViolationError)
    good = [result for i, result in enumerate(results) if i != 7]
    assert all(isinstance(result, tuple) for result in good)
    stored = await pool.fetch("SELECT id FROM jobs WHERE namespace = 'team-b'")
    assert {r["id"] for r in stored} == {job_id for job_id, _ in made} - {bad_id}


@pytest.mark.parametrize("due_soon", [True, False])
async def test_a_batch_wakes_the_leader_once_if_any_create_is_due_soon(
        pool: asyncpg.Pool, database_url: str, due_soon: bool) -> None:
    listener = await asyncpg.connect(database_url)
    woken: list[str] = []
    await listener.add_listener("jobsched_wake", lambda *args: woken.append(args[-1]))
    jobs = PostgresJobs(pool)
    try:
        await asyncio.gather(*(
            jobs.create_job(job_id, "team-c", columns, notify=due_soon and i == 3)
            for i, (job_id, columns) in enumerate(_columns(f"j{i}") for i in range(10))))
        await asyncio.sleep(0.3)
    finally:
        await jobs.close()
        await listener.close()
    assert woken == (["job"] if due_soon else [])


async def test_under_a_quota_batched_creates_stop_exactly_at_it(pool: asyncpg.Pool) -> None:
    """Far below the quota creates go in batches without a lock; from quota - margin on,
    the batch leaves them out and they queue on the namespace's lock: exactly the quota.
    Another namespace's creates in the same batches count against its own quota."""
    quota = QUOTA_LOCK_MARGIN + 40
    jobs = PostgresJobs(pool)
    sizes = _sizes(jobs._creates)
    made = [("team-q", *_columns(f"job-{i}")) for i in range(quota + 30)]
    others = [("team-r", *_columns(f"other-{i}")) for i in range(20)]
    rest = made[30:]
    for i, other in enumerate(others):
        rest.insert(i * 5, other)
    try:
        first = await asyncio.gather(*(jobs.create_job(job_id, ns, columns, quota=quota)
                                       for ns, job_id, columns in made[:30]))
        results = await asyncio.gather(
            *(jobs.create_job(job_id, ns, columns, quota=quota)
              for ns, job_id, columns in rest), return_exceptions=True)
    finally:
        await jobs.close()
    assert len(first) == 30 and max(sizes) > 1
    outcome = {job_id: result for (_, job_id, _), result in zip(rest, results, strict=True)}
    refused = [job_id for job_id, result in outcome.items() if isinstance(result, QuotaExceeded)]
    assert len(refused) == 30 and not set(refused) & {job_id for _, job_id, _ in others}
    assert all(isinstance(result, (tuple, QuotaExceeded)) for result in results)
    live = dict(await pool.fetch("SELECT namespace, count(*) FROM jobs"
                                 " WHERE state IN ('active', 'paused') GROUP BY namespace"))
    assert live == {"team-q": quota, "team-r": len(others)}


async def test_concurrent_lookups_share_statements_and_each_gets_its_own_answer(
        pool: asyncpg.Pool) -> None:
    jobs = PostgresJobs(pool)
    made = [_columns(f"job-{i}") for i in range(40)]
    for job_id, columns in made:
        await jobs.create_job(job_id, "team-a", columns)
    sizes = _sizes(jobs._lookups)
    asked = [(job_id, "team-a") for job_id, _ in made]
    asked += [(made[0][0], "team-a"), (made[1][0], "team-b"), (uuid.uuid4(), "team-a")]
    try:
        found = await asyncio.gather(*(jobs.get_job(job_id, ns) for job_id, ns in asked))
        alone = await jobs.get_job(made[2][0], "team-a")
    finally:
        await jobs.close()
    assert max(sizes) > 1 and sizes[-1] == 1
    for (job_id, columns), row in zip(made, found, strict=False):
        assert row is not None and row["id"] == job_id and row["name"] == columns.name
        assert "n" not in row and row["last_execution"] is None
    assert found[40] is not None and found[40]["id"] == made[0][0]  # asked twice
    assert found[41] is None  # another namespace's lookup does not see it
    assert found[42] is None  # no such job
    assert alone is not None and alone["id"] == made[2][0]
