"""Priority survives every way an execution is queued again (issue 15), against a real
PostgreSQL: the outbox's re-send, a re-drive by hand of a dead execution, a retry, a
worker lost with its lease, and the records of misfires and of fires skipped while
paused. The high and low bands are used, never normal: a band lost on the way reads back
as normal (Priority.from_rank's default), so only those two can show it."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.api.models import JobCreate
from jobsched.api.routes.jobs import job_columns
from jobsched.domain.firing import DueJob, FireRecord, JobAdvance, TickPlan, plan_resume, plan_tick
from jobsched.domain.priority import Priority
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import Dispatch, FinishedAttempt

BANDS = (Priority.HIGH, Priority.LOW)
EPOCH = 1


async def _job(pool: asyncpg.Pool, due: datetime, priority: Priority, **extra: object) -> uuid.UUID:
    job = JobCreate.model_validate_json(
        orjson.dumps(
            {
                "name": f"p-{priority}",
                "schedule": "* * * * * *",
                "kind": "python",
                "python": {"function": "m:f"},
                "priority": str(priority),
                **extra,
            }
        )
    )
    job_id = uuid.uuid4()
    columns = dataclasses.replace(job_columns(job, job_id, due), next_fire_at=due)
    row, _ = await PostgresJobs(pool).create_job(job_id, "default", columns)
    return uuid.UUID(str(row["id"]))


def _once(jobs: list[DueJob]) -> TickPlan:
    """Fire each due job once, at its due time (no misfire policy involved)."""
    return TickPlan(
        fires=[FireRecord(j.id, j.next_fire_at) for j in jobs],
        advances=[JobAdvance(j.id, None, 1) for j in jobs],
        replace=[],
    )


async def _fire_all(store: PostgresLeaderStore, now: datetime,
                    limit: int = 100) -> list[Dispatch]:
    """Fire batch after batch while a full one comes back, as the leader's loop does."""
    dispatches: list[Dispatch] = []
    while True:
        batch, selected, _ = await store.fire_due_jobs(EPOCH, now, limit, _once)
        dispatches += batch
        if selected < limit:
            return dispatches


async def test_a_batch_that_spans_bands_fires_its_highest_band_alone_first(
        pool: asyncpg.Pool) -> None:
    """A few high fires due among many low ones commit in a transaction of their own (and
    go out without waiting for the low ones to be written); the rest follows."""
    now = datetime.now(UTC).replace(microsecond=0)
    lows = {await _job(pool, now, Priority.LOW) for _ in range(5)}
    highs = {await _job(pool, now, Priority.HIGH) for _ in range(2)}
    store = PostgresLeaderStore(pool)
    assert await store.claim_epoch(EPOCH, "leader")
    first, selected, _ = await store.fire_due_jobs(EPOCH, now, 100, _once)
    assert {d.job_id for d in first} == highs
    assert selected == 100  # the low ones are still due: call again
    rest, selected, _ = await store.fire_due_jobs(EPOCH, now, 100, _once)
    assert {d.job_id for d in rest} == lows and selected == 5


async def _fire_one_per_band(pool: asyncpg.Pool) -> dict[Priority, Dispatch]:
    """A job of each band fired once; its dispatch (first publication) by band."""
    now = datetime.now(UTC).replace(microsecond=0)
    ids = {await _job(pool, now, band): band for band in BANDS}
    store = PostgresLeaderStore(pool)
    assert await store.claim_epoch(EPOCH, "leader")
    dispatches = await _fire_all(store, now)
    fired = {ids[d.job_id]: d for d in dispatches}
    assert {band: d.priority for band, d in fired.items()} == {b: b for b in BANDS}
    return fired


def _bands(dispatches: list[Dispatch], fired: dict[Priority, Dispatch]) -> dict[Priority, Priority]:
    """For each band fired: the band each re-queued dispatch of that execution carries."""
    by_execution = {d.execution_id: d.priority for d in dispatches}
    return {band: by_execution[d.execution_id] for band, d in fired.items()}


async def _finish(
    pool: asyncpg.Pool, fired: dict[Priority, Dispatch], state: ExecutionState, attempt: int = 1
) -> None:
    workers = PostgresWorkerStore(pool)
    claims = [(d.execution_id, attempt) for d in fired.values()]
    claimed = await workers.claim_executions(claims, "w", 30)
    assert {c.id: c.band for c in claimed} == {d.execution_id: b for b, d in fired.items()}
    outcome = AttemptOutcome.FAILED
    results = [
        FinishedAttempt(d.execution_id, attempt, state, outcome, 1, "boom", None, 0)
        for d in fired.values()
    ]
    assert set((await workers.finish_attempts(results, "w")).values()) == {state}


async def test_the_outbox_resends_in_the_band_it_fired_in(pool: asyncpg.Pool) -> None:
    fired = await _fire_one_per_band(pool)  # never confirmed published: still in the outbox
    store = PostgresLeaderStore(pool)
    later = datetime.now(UTC) + timedelta(minutes=1)
    resent = await store.unpublished(later, 100)
    assert len(resent) == len(BANDS)
    assert _bands(resent, fired) == {b: b for b in BANDS}
    assert all(not d.fresh for d in resent)


async def test_a_dead_execution_redriven_by_hand_keeps_its_band(pool: asyncpg.Pool) -> None:
    fired = await _fire_one_per_band(pool)
    store = PostgresLeaderStore(pool)
    await store.mark_published([d.execution_id for d in fired.values()])
    await _finish(pool, fired, ExecutionState.DEAD)
    jobs = PostgresJobs(pool)
    for band, dispatch in fired.items():
        row = await jobs.redrive(dispatch.execution_id, "default")
        assert row is not None and row["state"] == "queued", row
        assert (row["attempt"], row["priority"]) == (2, band.rank)
    redriven = await store.manual_unpublished(100)
    assert _bands(redriven, fired) == {b: b for b in BANDS}
    # The worker that claims the second attempt sees the band too.
    claimed = await PostgresWorkerStore(pool).claim_executions(
        [(d.execution_id, 2) for d in fired.values()], "w2", 30
    )
    assert {c.id: c.band for c in claimed} == {d.execution_id: b for b, d in fired.items()}


async def test_a_retry_and_a_lost_worker_keep_the_band(pool: asyncpg.Pool) -> None:
    fired = await _fire_one_per_band(pool)
    store = PostgresLeaderStore(pool)
    await store.mark_published([d.execution_id for d in fired.values()])
    await _finish(pool, fired, ExecutionState.RETRYING)
    soon = datetime.now(UTC) + timedelta(seconds=5)
    retried = await store.requeue_retries(EPOCH, soon, 100)
    assert _bands(retried, fired) == {b: b for b in BANDS}
    # The worker of attempt 2 dies: its lease lapses, the reaper retries the execution.
    claimed = await PostgresWorkerStore(pool).claim_executions(
        [(d.execution_id, 2) for d in fired.values()], "doomed", 30
    )
    assert len(claimed) == len(BANDS)
    await pool.execute("UPDATE executions SET lease_expires_at = now() - interval '1 second'")
    reaped = await store.reap_expired(EPOCH, 100, lost_limit=3)
    assert {r.state for r in reaped} == {ExecutionState.RETRYING}
    after_loss = await store.requeue_retries(EPOCH, soon, 100)
    assert _bands(after_loss, fired) == {b: b for b in BANDS}
    assert {d.attempt for d in after_loss} == {3}


@pytest.mark.parametrize(
    ("misfire", "states"),
    [
        ("skip", {"missed": 1}),
        ("run_once", {"queued": 1}),
        ("run_all", {"queued": 2, "missed": 1}),
    ],
)
async def test_fires_after_downtime_are_recorded_in_the_jobs_band(
    pool: asyncpg.Pool, misfire: str, states: dict[str, int]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    down_since = now - timedelta(minutes=10)
    ids = {
        await _job(pool, down_since, band, misfire=misfire, max_catchup=2): band for band in BANDS
    }
    store = PostgresLeaderStore(pool)
    assert await store.claim_epoch(EPOCH, "leader")
    # Planned half a second on with a 0.1 s threshold: every fire since is a misfire.
    later = now + timedelta(milliseconds=500)
    not_run = []
    for _ in BANDS:  # one band per transaction, highest first
        _, _, records = await store.fire_due_jobs(
            EPOCH, now, 100, lambda d: plan_tick(d, later, misfire_threshold_s=0.1)
        )
        not_run += records
    assert len(not_run) == len(BANDS) * states.get("missed", 0)
    rows = await pool.fetch("SELECT job_id, state, priority FROM executions")
    for job_id, band in ids.items():
        mine = [r for r in rows if r["job_id"] == job_id]
        counts: dict[str, int] = {}
        for r in mine:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        assert counts == states, (misfire, mine)
        assert {r["priority"] for r in mine} == {band.rank}, (misfire, band, mine)


async def test_fires_skipped_while_paused_are_recorded_in_the_jobs_band(
    pool: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    jobs = PostgresJobs(pool)
    ids = {await _job(pool, now - timedelta(minutes=10), b, misfire="skip"): b for b in BANDS}
    for job_id in ids:
        assert await jobs.pause_job(job_id, "default")
        assert await jobs.resume_job(job_id, "default", lambda r: plan_resume(r, now)) == (
            "resumed"
        )
    rows = await pool.fetch("SELECT job_id, state, priority FROM executions")
    assert sorted(r["state"] for r in rows) == ["skipped"] * len(BANDS)
    assert {r["job_id"]: r["priority"] for r in rows} == {j: b.rank for j, b in ids.items()}


async def test_runs_waiting_are_counted_per_band_until_they_start(pool: asyncpg.Pool) -> None:
    """The cluster view's queue depth in runs (RabbitMQ counts messages of many runs):
    fired and not started, per band; a claimed run no longer waits."""
    jobs = PostgresJobs(pool)
    assert await jobs.waiting_by_band() == dict.fromkeys(Priority, 0)
    now = datetime.now(UTC).replace(microsecond=0)
    for band, count in ((Priority.HIGH, 2), (Priority.LOW, 3)):
        for _ in range(count):
            await _job(pool, now, band)
    store = PostgresLeaderStore(pool)
    assert await store.claim_epoch(EPOCH, "leader")
    dispatches = await _fire_all(store, now)
    assert await jobs.waiting_by_band() == {Priority.HIGH: 2, Priority.NORMAL: 0,
                                            Priority.LOW: 3}
    low = next(d for d in dispatches if d.priority == Priority.LOW)
    claimed = await PostgresWorkerStore(pool).claim_executions([(low.execution_id, 1)], "w", 30)
    assert [c.id for c in claimed] == [low.execution_id]
    assert await jobs.waiting_by_band() == {Priority.HIGH: 2, Priority.NORMAL: 0,
                                            Priority.LOW: 2}
