"""Time-partitioned history (migration 014) on a real database: day partitions made ahead,
retention dropping whole days (never one with unfinished work), per-job limits, fires with
no partition of their own, and an existing deployment's rows kept across the migration."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import orjson
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.domain.execution_ids import batch_window, scheduled_window, window_of
from jobsched.domain.states import AttemptOutcome
from jobsched.ports import StaleEpochError
from tests.helpers import database_at
from tests.integration.test_postgres import _job as _due_job
from tests.integration.test_postgres import _plan

BATCH = 5_000


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d")


async def _partitions(pool: asyncpg.Pool, table: str = "executions") -> dict[str, datetime]:
    rows = await pool.fetch("SELECT partition_name, upper FROM history_partitions()"
                            " WHERE table_name = $1", table)
    return {r["partition_name"]: r["upper"] for r in rows}


async def _execution(pool: asyncpg.Pool, job_id: uuid.UUID, at: datetime, state: str,
                     finished: datetime | None, attempts: int = 1) -> uuid.UUID:
    execution_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO executions (job_id, scheduled_for, state, finished_at, epoch, attempt)"
        " VALUES ($1, $2, $3, $4, 1, $5) RETURNING id", job_id, at, state, finished, attempts)
    await pool.executemany(
        "INSERT INTO attempts (execution_id, attempt, worker, scheduled_for, finished_at)"
        " VALUES ($1, $2, 'w', $3, $4)",
        [(execution_id, n, at, finished) for n in range(1, attempts + 1)])
    return execution_id


async def _where(pool: asyncpg.Pool, execution_id: uuid.UUID) -> str | None:
    table: str | None = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM executions WHERE id = $1", execution_id)
    return table


async def test_partitions_are_made_ahead_by_the_leader_and_only_once(
        pool: asyncpg.Pool) -> None:
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(5, "leader")
    later = datetime.now(UTC) + timedelta(days=20)
    made = await leader.ensure_partitions(5, later)
    # yesterday (of that moment) to a week after it: nine days, none of which existed
    # (webhook deliveries' days follow: test_delivery_partitions)
    made = [m for m in made if m.startswith("executions_")]
    assert made == [f"executions_p{_day(later + timedelta(days=n))}" for n in range(-1, 8)]
    executions, attempts = await _partitions(pool), await _partitions(pool, "attempts")
    for name in made:
        assert name in executions
        assert "attempts" + name.removeprefix("executions") in attempts
    assert await leader.ensure_partitions(5, later) == []
    # a fire of that day lands in its own day's partition
    job = await _due_job(pool, datetime.now(UTC))
    at = later + timedelta(days=3)
    assert await _where(pool, await _execution(pool, job, at, "queued", None)) \
        == f"executions_p{_day(at)}"
    # fenced: a deposed leader makes nothing
    assert await leader.claim_epoch(6, "other")
    with pytest.raises(StaleEpochError):
        await leader.ensure_partitions(5, later + timedelta(days=30))


async def test_a_fire_without_a_partition_is_kept_and_moves_when_its_day_is_made(
        pool: asyncpg.Pool) -> None:
    job = await _due_job(pool, datetime.now(UTC))
    far = datetime.now(UTC) + timedelta(days=90)
    execution = await _execution(pool, job, far, "queued", None, attempts=2)
    assert await _where(pool, execution) == "executions_default"
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    await leader.ensure_partitions(1, far)
    assert await _where(pool, execution) == f"executions_p{_day(far)}"
    assert await pool.fetchval("SELECT count(*) FROM executions_default") == 0
    assert await pool.fetchval("SELECT count(*) FROM attempts_default") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM attempts WHERE execution_id = $1 AND tableoid = $2::regclass",
        execution, f"attempts_p{_day(far)}") == 2


async def test_retention_drops_old_days_whole_but_never_one_with_unfinished_work(
        pool: asyncpg.Pool) -> None:
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    now = datetime.now(UTC)
    await pool.execute("SELECT history_ensure_partitions($1, $2)",
                       now - timedelta(days=45), now - timedelta(days=38))
    job = await _due_job(pool, now)
    old = now - timedelta(days=40)
    done = [await _execution(pool, job, old + timedelta(minutes=n), "succeeded", old,
                             attempts=2) for n in range(3)]
    busy_day = now - timedelta(days=39)
    running = await _execution(pool, job, busy_day, "running", None)
    finished_beside_it = await _execution(pool, job, busy_day + timedelta(minutes=1),
                                          "failed", busy_day)
    recent = await _execution(pool, job, now - timedelta(hours=1), "succeeded", now)

    deleted = await leader.purge_history(1, now - timedelta(days=30), BATCH)

    partitions = await _partitions(pool)
    assert f"executions_p{_day(old)}" not in partitions
    assert f"attempts_p{_day(old)}" not in await _partitions(pool, "attempts")
    assert f"executions_p{_day(busy_day)}" in partitions  # its running execution stays
    assert await pool.fetchval("SELECT count(*) FROM executions WHERE id = ANY($1)", done) == 0
    # the finished one beside the running one goes row by row, with its attempt
    assert deleted == 1
    kept = {r["id"] for r in await pool.fetch("SELECT id FROM executions")}
    assert kept == {running, recent}
    assert {r["execution_id"] for r in await pool.fetch("SELECT execution_id FROM attempts")} \
        == {running, recent}
    assert finished_beside_it not in kept
    # a second pass changes nothing; once the run ends, its day goes too
    assert await leader.purge_history(1, now - timedelta(days=30), BATCH) == 0
    await pool.execute("UPDATE executions SET state = 'succeeded', finished_at = $2"
                       " WHERE id = $1", running, busy_day)
    await leader.purge_history(1, now - timedelta(days=30), BATCH)
    assert f"executions_p{_day(busy_day)}" not in await _partitions(pool)
    assert {r["id"] for r in await pool.fetch("SELECT id FROM executions")} == {recent}


async def test_a_day_whose_drop_cannot_get_its_lock_waits_for_the_next_pass_whole(
        pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long reader holds executions: the drop gives up after its lock timeout (it never
    queues the hot path behind that reader for long), and the day is not deleted row by
    row instead (that would be the vacuum debt partitions avoid): the next pass drops it."""
    from jobsched.adapters.postgres import leader as leader_module

    monkeypatch.setattr(leader_module, "DROP_TRIES", 2)
    monkeypatch.setattr(leader_module, "DROP_RETRY_S", 0.01)
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    await pool.execute("SELECT history_ensure_partitions($1, $2)", old, old)
    job = await _due_job(pool, now)
    done = await _execution(pool, job, old, "succeeded", old)
    async with pool.acquire() as reader:
        reader_tx = reader.transaction()
        await reader_tx.start()
        await reader.fetchval("SELECT count(*) FROM executions")
        assert await leader.purge_history(1, now - timedelta(days=30), BATCH) == 0
        assert f"executions_p{_day(old)}" in await _partitions(pool)
        assert await pool.fetchval("SELECT count(*) FROM executions WHERE id = $1", done) == 1
        await reader_tx.rollback()
    assert await leader.purge_history(1, now - timedelta(days=30), BATCH) == 0
    assert f"executions_p{_day(old)}" not in await _partitions(pool)


async def test_a_deposed_leader_drops_nothing(pool: asyncpg.Pool) -> None:
    leader = PostgresLeaderStore(pool)
    now = datetime.now(UTC)
    await pool.execute("SELECT history_ensure_partitions($1, $2)",
                       now - timedelta(days=45), now - timedelta(days=44))
    assert await leader.claim_epoch(1, "leader")
    assert await leader.claim_epoch(2, "newer")
    with pytest.raises(StaleEpochError):
        await leader.purge_history(1, now - timedelta(days=30), BATCH)
    assert f"executions_p{_day(now - timedelta(days=45))}" in await _partitions(pool)


async def test_per_job_limits_delete_executions_with_their_attempts(pool: asyncpg.Pool) -> None:
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    now = datetime.now(UTC).replace(microsecond=0)
    # spread over three days' partitions
    await pool.execute("SELECT history_ensure_partitions($1, $2)", now - timedelta(days=3), now)
    limited = await _due_job(pool, now, history={"succeeded": 2})
    runs = [await _execution(pool, limited, now - timedelta(hours=20 * n), "succeeded",
                             now, attempts=2) for n in range(5)]
    assert await leader.purge_history(1, now - timedelta(days=30), BATCH) == 3
    kept = [r["id"] for r in await pool.fetch(
        "SELECT id FROM executions WHERE job_id = $1 ORDER BY scheduled_for DESC", limited)]
    assert kept == runs[:2]
    assert await pool.fetchval("SELECT count(*) FROM attempts") == 4


# -- an existing deployment: migration 013 -> 014 -------------------------------------------


@pytest.fixture
async def database_at_013() -> AsyncIterator[str]:
    async with database_at(13) as (url, applied):
        assert applied[-1] == "013_trigger_args.sql"
        yield url


async def _history_at_013(conn: asyncpg.Connection) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A job with executions 40 days old, of today (one running) and its attempts, written
    as 013's code writes them (attempts without scheduled_for)."""
    job_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO jobs (name, kind, payload, schedule, spec) VALUES"
        " ('j', 'python', '{}', '* * * * *', '{}') RETURNING id")
    now = datetime.now(UTC)
    ids = []
    for at, state in ((now - timedelta(days=40), "succeeded"), (now - timedelta(hours=1), "dead"),
                      (now - timedelta(minutes=1), "running")):
        execution_id = await conn.fetchval(
            "INSERT INTO executions (job_id, scheduled_for, state, epoch, attempt, output,"
            " finished_at) VALUES ($1, $2, $3, 1, 2, 'out', $4) RETURNING id",
            job_id, at, state, None if state == "running" else at)
        for attempt in (1, 2):
            await conn.execute("INSERT INTO attempts (execution_id, attempt, worker, output)"
                               " VALUES ($1, $2, 'w', $3)", execution_id, attempt,
                               f"try {attempt}")
        ids.append(execution_id)
    return job_id, ids


def _statements(script: str) -> list[str]:
    """A psql script's statements, one by one (dollar-quoted bodies kept whole)."""
    statements, current, quoted = [], [], False
    for line in script.splitlines():
        if not current and (not line.strip() or line.startswith("--")):
            continue
        current.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current = []
    return statements


@pytest.mark.parametrize("prepared", [False, True], ids=["in-migration", "prepared-online"])
async def test_migrating_013_to_014_keeps_history_readable(database_at_013: str,
                                                           prepared: bool) -> None:
    conn = await asyncpg.connect(database_at_013)
    try:
        job_id, ids = await _history_at_013(conn)
        if prepared:
            script = (resources.files("jobsched.adapters.postgres") / "prepare"
                      / "014_partitioned_history.sql").read_text()
            for statement in _statements(script):
                await conn.execute(statement)
            # the old version keeps writing meanwhile: its attempts get scheduled_for
            await conn.execute("INSERT INTO attempts (execution_id, attempt, worker)"
                               " VALUES ($1, 3, 'w')", ids[2])
    finally:
        await conn.close()

    assert await postgres.migrate(database_at_013, until=15) == ["014_partitioned_history.sql",
                                                                 "015_execution_ids.sql"]
    # the rest, as the current code runs only on the current schema
    await postgres.migrate(database_at_013)

    pool = await postgres.create_pool(database_at_013)
    try:
        legacy = await pool.fetchrow("SELECT lower, upper FROM history_partitions()"
                                     " WHERE partition_name = 'executions_legacy'")
        assert legacy["lower"] is None and legacy["upper"] > datetime.now(UTC)
        if prepared:  # the cut-over the preparation chose: a week ahead
            assert legacy["upper"] > datetime.now(UTC) + timedelta(days=6)
        jobs = PostgresJobs(pool)
        for execution_id in ids:
            found = await jobs.get_execution(execution_id, "default")
            assert found is not None
            execution, attempts = found
            assert execution["output"] == "out"
            assert [a["output"] for a in attempts][:2] == ["try 1", "try 2"]
        assert len((await jobs.get_execution(ids[2], "default") or ({}, []))[1]) \
            == (3 if prepared else 2)
        # guarantee 1 still holds across the legacy partition
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute("INSERT INTO executions (job_id, scheduled_for, epoch)"
                               " SELECT job_id, scheduled_for, 1 FROM executions WHERE id = $1",
                               ids[0])
        # new fires after the cut-over land in day partitions
        later = legacy["upper"] + timedelta(hours=5)
        leader = PostgresLeaderStore(pool)
        assert await leader.claim_epoch(1, "leader")
        await leader.ensure_partitions(1, later)
        new_id = await pool.fetchval("INSERT INTO executions (job_id, scheduled_for, epoch)"
                                     " VALUES ($1, $2, 1) RETURNING id", job_id, later)
        assert await _where(pool, new_id) == f"executions_p{_day(later)}"
        # retention still purges the legacy partition's old rows, row by row
        assert await leader.purge_history(1, datetime.now(UTC) - timedelta(days=30), BATCH) == 1
        assert await pool.fetchval("SELECT count(*) FROM attempts WHERE execution_id = $1",
                                   ids[0]) == 0
    finally:
        await pool.close()


# -- the worker's hot path reads one partition ----------------------------------------------


def _executed_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Scans of an executions or attempts partition that ran (run-time pruning leaves the
    others 'never executed': zero loops)."""
    name = plan.get("Relation Name", "")
    found = [plan] if (name.startswith(("executions_", "attempts_"))
                       and plan["Node Type"] != "ModifyTable" and plan["Actual Loops"]) else []
    for child in plan.get("Plans", []):
        found += _executed_scans(child)
    return found


def _array(values: list[Any]) -> str:
    return "'{" + ",".join("NULL" if v is None else f'"{v}"' for v in values) + "}'"


async def test_publish_marks_claims_renewals_and_results_read_one_partition(
        pool: asyncpg.Pool) -> None:
    """With a month of day partitions, the worker's statements must read the batch's day's
    partition only, not every partition (a hash join over all of them took 236 ms for a
    claim of 500 on 1 M rows of history), in a generic plan made on partitions without
    statistics too (which scans that one small partition rather than use its index)."""
    from jobsched.adapters.postgres.leader import Q as LEADER_SQL
    from jobsched.adapters.postgres.worker import Q as WORKER_SQL

    now = datetime.now(UTC)
    await pool.execute("SELECT history_ensure_partitions($1, $2)", now - timedelta(days=30), now)
    job = await _due_job(pool, now)
    for days in range(1, 30):
        await _execution(pool, job, now - timedelta(days=days), "succeeded", now)
    queued = [await pool.fetchrow(
        "INSERT INTO executions (job_id, scheduled_for, epoch) VALUES ($1, $2, 1)"
        " RETURNING id, scheduled_for", job, now + timedelta(seconds=n)) for n in range(3)]
    ids = _array([r["id"] for r in queued])
    days = _array([r["scheduled_for"].isoformat() for r in queued])
    partition = f"executions_p{_day(now)}"
    three = {"ids": ids, "scheduled_for": days, "attempts": "'{1,1,1}'", "worker": "'w'",
             "earliest": f"'{queued[0]['scheduled_for'].isoformat()}'",
             "latest": f"'{queued[-1]['scheduled_for'].isoformat()}'",
             "lease_s": "30", "states": "'{succeeded,succeeded,succeeded}'",
             "outcomes": "'{succeeded,succeeded,succeeded}'", "exit_codes": "'{0,0,0}'",
             "errors": _array([None] * 3), "outputs": _array([None] * 3),
             "retry_in_s": "'{0,0,0}'", "reasons": _array([None] * 3),
             "started_at": _array([None] * 3)}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for name in ("mark_published", "claim_executions", "heartbeat", "finish_executions"):
            query = getattr(LEADER_SQL if name == "mark_published" else WORKER_SQL, name)
            await conn.execute(f"PREPARE {name} AS {query.text}")
            args = ", ".join(three[param] for param in query.params)
            plan = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({args})")
            scans = _executed_scans(orjson.loads(plan)[0]["Plan"])
            assert scans, name
            for scan in scans:
                assert scan["Relation Name"] in (partition, f"attempts_p{_day(now)}"), (
                    name, scan["Relation Name"], scan.get("Parent Relationship"))
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE state = 'succeeded'"
                                   " AND id = ANY($1)", [r["id"] for r in queued]) == 3


# -- execution ids carry their partition key (migration 015) --------------------------------


def _ms(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


async def test_execution_ids_carry_their_scheduled_for_and_lookups_by_id_find_them(
        pool: asyncpg.Pool) -> None:
    """Ids are UUIDv7 of scheduled_for's millisecond, from each path that makes executions;
    a lookup by id alone finds them, and still finds a random id made before 015."""
    now = datetime.now(UTC)
    await pool.execute("SELECT history_ensure_partitions($1, $2)", now - timedelta(days=10), now)
    jobs, worker = PostgresJobs(pool), PostgresWorkerStore(pool)
    job = await _due_job(pool, now)
    made = []
    for days in (1, 3, 7, 9):  # triggered runs (insert_record), microseconds and all
        at = now - timedelta(days=days, microseconds=days * 137)
        row = await jobs.trigger_job(job, at)
        assert row is not None
        made.append((row["id"], at))
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    fired, _, _ = await leader.fire_due_jobs(1, now, 10, _plan)  # the leader's fire
    made += [(d.execution_id, d.scheduled_for) for d in fired]
    assert len(made) == 5
    for execution_id, at in made:
        assert execution_id.version == 7
        assert execution_id.int >> 80 == _ms(at)
        lower, upper = scheduled_window(execution_id) or (now, now)
        assert lower <= at < upper
        assert await _where(pool, execution_id) == f"executions_p{_day(at)}"
        await pool.execute("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                           " VALUES ($1, 1, 'w', $2)", execution_id, at)
    # an execution made before 015 (a random id) in a day partition of its own
    old = await _execution(pool, job, now - timedelta(days=5), "running", None)
    assert old.version == 4
    for execution_id in [m[0] for m in made] + [old]:
        found = await jobs.get_execution(execution_id, "default")
        assert found is not None and found[0]["id"] == execution_id
        assert [a["attempt"] for a in found[1]] == [1]
        assert await jobs.get_execution(execution_id, "other") is None
        await worker.close_attempt(execution_id, 1, AttemptOutcome.CANCELLED, "stop", "out", None)
        assert await pool.fetchval("SELECT outcome FROM attempts WHERE execution_id = $1",
                                   execution_id) == "cancelled"
    await worker.stream_output([(made[0][0], 1, "x")], "w")  # closed: nothing to write
    # a v7 id whose row is not in its millisecond is not found (the bound is trusted)
    elsewhere = _ms(now - timedelta(days=1)) << 80
    stray = uuid.UUID(int=(made[1][0].int & ((1 << 80) - 1)) | elsewhere)
    assert await jobs.get_execution(stray, "default") is None


async def test_an_execution_id_is_a_uuid7_of_its_millisecond_made_inline(
        pool: asyncpg.Pool) -> None:
    """jobsched_execution_id (015, one expression since 021): version 7 with the RFC 9562
    variant and scheduled_for's millisecond in its first 48 bits; random (version 4) for a
    time those bits cannot hold; and inlined into the statement that calls it (no SQL
    function call per row)."""
    now = datetime.now(UTC)
    times = [now, datetime(1970, 1, 1, tzinfo=UTC), now - timedelta(days=3, microseconds=999),
             datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)]
    for at in times:
        ids = [r[0] for r in await pool.fetch(
            "SELECT jobsched_execution_id($1) FROM generate_series(1, 3)", at)]
        assert len(set(ids)) == 3  # random bits differ
        for made in ids:
            assert made.version == 7 and made.variant == uuid.RFC_4122, made
            assert made.int >> 80 == _ms(at)
    for at in ("1969-12-31 23:59:59.999+00", "infinity", "-infinity"):
        made = await pool.fetchval("SELECT jobsched_execution_id($1::text::timestamptz)", at)
        assert made.version == 4, (at, made)
    plan = await pool.fetchval(
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT jobsched_execution_id(now())")
    assert "jobsched_execution_id" not in str(plan) and "gen_random_uuid" in str(plan), plan


async def test_a_lookup_by_id_reads_one_partition_in_custom_and_generic_plans(
        pool: asyncpg.Pool) -> None:
    """get_execution, close_attempt and hand_back by a v7 id read the id's day partition
    alone (pruned when planned or when the generic plan starts); by a pre-015 id, all, but
    for a caller that knows its scheduled_for (the worker's claimed run)."""
    from jobsched.adapters.postgres.jobs import Q as JOBS_SQL
    from jobsched.adapters.postgres.worker import Q as WORKER_SQL

    now = datetime.now(UTC)
    await pool.execute("SELECT history_ensure_partitions($1, $2)", now - timedelta(days=10), now)
    job = await _due_job(pool, now)
    at = now - timedelta(days=4)
    row = await PostgresJobs(pool).trigger_job(job, at)
    assert row is not None
    await pool.execute("INSERT INTO attempts (execution_id, attempt, worker, scheduled_for)"
                       " VALUES ($1, 1, 'w', $2)", row["id"], at)
    old_at = now - timedelta(days=2)
    old = await _execution(pool, job, old_at, "running", None)
    cases = ((row["id"], window_of(row["id"]), _day(at)), (old, window_of(old), None),
             (old, batch_window([old], [old_at]), _day(old_at)))
    for mode in ("force_custom_plan", "force_generic_plan"):
        for execution_id, (lo, hi), day in cases:
            values = {"id": f"'{execution_id}'", "execution_id": f"'{execution_id}'",
                      "namespace": "'default'", "attempt": "1", "worker": "'w'",
                      "outcome": "'cancelled'", "error": "NULL", "output": "NULL",
                      "exit_code": "NULL",
                      "lo": "NULL" if lo is None else f"'{lo.isoformat()}'",
                      "hi": "NULL" if hi is None else f"'{hi.isoformat()}'"}
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                for query in (JOBS_SQL.get_execution, WORKER_SQL.close_attempt,
                              WORKER_SQL.hand_back):
                    await conn.execute(f"PREPARE {query.name} AS {query.text}")
                    args = ", ".join(values[param] for param in query.params)
                    plan = await conn.fetchval(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {query.name}({args})")
                    scanned = {s["Relation Name"]
                               for s in _executed_scans(orjson.loads(plan)[0]["Plan"])}
                    if day is not None:
                        assert scanned <= {f"executions_p{day}", f"attempts_p{day}"}, (
                            mode, query.name, scanned)
                        assert scanned, (mode, query.name)
                    else:  # no bound: every day partition (and the DEFAULT one)
                        assert len(scanned) > 10, (mode, query.name, scanned)
                    await conn.execute(f"DEALLOCATE {query.name}")


async def test_making_a_partition_never_deadlocks_with_a_writer_of_jobs_reading_history(
        pool: asyncpg.Pool) -> None:
    """The hot path locks jobs, then the partitions of executions (a worker's result batch
    names jobs; its plan locks every partition). Attaching a day took executions_default,
    then jobs (the foreign key): with a writer of jobs that then read executions, that was
    a deadlock (`jobsched bench soak`). The leader now takes jobs first: the writer's read
    goes through, and the day is made once the writer is done."""
    leader = PostgresLeaderStore(pool)
    assert await leader.claim_epoch(1, "leader")
    later = datetime.now(UTC) + timedelta(days=40)
    deadlocks = await pool.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    async with pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("LOCK TABLE jobs IN ROW EXCLUSIVE MODE")  # as a write of jobs
        making = asyncio.create_task(leader.ensure_partitions(1, later))
        await asyncio.sleep(0.3)  # the leader is at its locks now
        # the read locks every partition, executions_default too
        assert await writer.fetchval("SELECT count(*) FROM executions") == 0
        await tx.commit()
    made = await asyncio.wait_for(making, 10)
    if not made:  # the writer outlasted every try of that pass: the next one makes them
        made = await leader.ensure_partitions(1, later)
    assert f"executions_p{_day(later)}" in made
    assert f"executions_p{_day(later)}" in await _partitions(pool)
    assert await pool.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") \
        == deadlocks
