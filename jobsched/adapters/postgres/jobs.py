"""The api's repository on PostgreSQL: jobs as users create, change and read them, and
their executions. Implements ``jobsched.ports.JobRepository``."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from jobsched.adapters.postgres.listen import CANCEL_CHANNEL, WAKE_CHANNEL
from jobsched.adapters.postgres.sql import load_queries
from jobsched.batching import Batcher
from jobsched.domain.execution_ids import window_of
from jobsched.domain.priority import Priority
from jobsched.ports import IdempotencyConflict, JobColumns, LeaderInfo, QuotaExceeded, Row

Q = load_queries("jobs.sql")

T = TypeVar("T")
R = TypeVar("R")

# The most creates one insert_jobs statement carries. Under a quota these count without
# a lock, so a batch stays well inside the margin below.
CREATE_BATCH = 32
# The most lookups one get_jobs statement carries.
LOOKUP_BATCH = 64

# Below quota - margin, creates count without locking (the count moves by at most the
# creates in flight); nearer, they serialize per namespace so the quota is exact.
QUOTA_LOCK_MARGIN = 64


_COLUMN_NAMES = tuple(f.name for f in dataclasses.fields(JobColumns))


def _columns(columns: JobColumns) -> dict[str, Any]:
    return {name: getattr(columns, name) for name in _COLUMN_NAMES}


async def _each_alone_if_failed(
    items: list[T], statement: Callable[[list[T]], Awaitable[list[R]]],
) -> list[R | Exception]:
    """``statement`` for a batch of requests' items, an answer each. Should it fail, each
    item is tried on its own, so one bad item (or a lost connection) fails its own request
    only, as it would have without the batch; a lone item's failure is its answer."""
    try:
        return list(await statement(items))
    except Exception as exc:  # noqa: BLE001 - raised in the request it belongs to
        if len(items) == 1:
            return [exc]
        return [(await _each_alone_if_failed([item], statement))[0] for item in items]


def _row(record: Any) -> Row | None:
    return dict(record) if record is not None else None


#: The columns that are times: in the batch's JSON they are written in UTC, as PostgreSQL
#: reads an offset only up to ±15:59 and Python's go to ±23:59.
_TIMES = tuple(f.name for f in dataclasses.fields(JobColumns)
               if "datetime" in str(f.type))


def _json_row(create: _Create) -> dict[str, Any]:
    """A create as one row of insert_jobs' JSON batch."""
    row = {"id": create.id, "namespace": create.namespace, "quota": create.quota,
           **create.values}
    for name in _TIMES:
        value = row[name]
        if value is not None:  # naive: UTC, as asyncpg takes it for a timestamptz
            row[name] = (value.astimezone(UTC) if value.tzinfo is not None
                         else value.replace(tzinfo=UTC))
    return row


@dataclasses.dataclass(frozen=True, slots=True)
class _Create:
    id: uuid.UUID
    namespace: str
    values: dict[str, Any]
    notify: bool
    quota: int


class PostgresJobs:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Creates of concurrent requests share a statement: while one batch is in the
        # database the next gathers (no delay of its own: a lone create goes at once).
        self._creates: Batcher[_Create, Row | Exception | None] = Batcher(
            self._insert_batch, max_size=CREATE_BATCH, max_delay=0)
        # Likewise the GETs of one job.
        self._lookups: Batcher[tuple[uuid.UUID, str], Row | Exception | None] = Batcher(
            self._get_batch, max_size=LOOKUP_BATCH, max_delay=0)

    async def close(self) -> None:
        await self._creates.close()
        await self._lookups.close()

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval(Q.ping.text, timeout=2)

    async def create_job(
        self,
        job_id: uuid.UUID,
        namespace: str,
        columns: JobColumns,
        *,
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        idempotency_ttl_s: float = 86_400.0,
        quota: int = 0,
        notify: bool = True,
    ) -> tuple[Row, bool]:
        """Insert a job under the namespace's quota. With an idempotency key, a repeat of an
        identical create answers the first job instead: returns the job row (with
        ``last_execution``) and whether it is such a replay. ``notify`` wakes the leader
        (only needed for a job due before its next look)."""
        values = _columns(columns)
        if idempotency_key is None:
            # The common case: one statement, one round trip, one commit for the creates
            # of all the requests in flight (None: too near the quota to go unlocked).
            created = await self._creates.submit(
                _Create(job_id, namespace, values, notify, quota))
            if isinstance(created, Exception):
                raise created
            if created is not None:
                # The columns as given, those the database set and the stored spec.
                return {**values, "id": job_id, "namespace": namespace, **created,
                        "last_execution": None}, False
        async with self.pool.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                if first is not None:
                    return first, True
            if quota:
                await self._within_quota(conn, namespace, quota)
            row = await Q.insert_job_keyed.fetchrow(
                conn, id=job_id, namespace=namespace, idempotency_key=idempotency_key,
                idempotency_digest=digest, **values)
            if row is None:  # a concurrent create with this key won the race
                assert idempotency_key is not None
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                assert first is not None
                return first, True
            if notify:
                await Q.notify.execute(conn, channel=WAKE_CHANNEL, payload="job")
        return {**dict(row), "last_execution": None}, False

    async def _insert_batch(self, creates: list[_Create]) -> list[Row | Exception | None]:
        """One insert_jobs for the batch; None for a create it left out as too near its
        quota."""
        return await _each_alone_if_failed(creates, self._insert_rows)

    async def _insert_rows(self, creates: list[_Create]) -> list[Row | None]:
        rows = await Q.insert_jobs.fetch(
            self.pool, channel=WAKE_CHANNEL, margin=QUOTA_LOCK_MARGIN,
            notify=any(create.notify for create in creates),
            rows=[_json_row(create) for create in creates])
        # What the database set (state, run_count, the times) and the spec as stored;
        # create_job adds the rest.
        by_id = {row[0]: {"state": row[1], "run_count": row[2], "created_at": row[3],
                          "updated_at": row[4], "spec": row[5]} for row in rows}
        return [by_id.get(create.id) for create in creates]

    @staticmethod
    async def _replay(conn: asyncpg.Connection, namespace: str, key: str,
                      digest: bytes | None, ttl_s: float) -> Row | None:
        found = await Q.job_by_idempotency_key.fetchrow(conn, namespace=namespace, key=key,
                                                        ttl_s=ttl_s)
        if found is None:
            return None
        if found["expired"]:
            await Q.release_idempotency_key.execute(conn, id=found["id"], ttl_s=ttl_s)
            return None
        if found["idempotency_digest"] != digest:
            raise IdempotencyConflict(found["id"])
        return _row(await Q.get_job.fetchrow(conn, id=found["id"], namespace=namespace))

    @staticmethod
    async def _within_quota(conn: asyncpg.Connection, namespace: str, quota: int) -> None:
        if await Q.count_live_jobs.fetchval(conn, namespace=namespace,
                                            cap=quota) < quota - QUOTA_LOCK_MARGIN:
            return
        await Q.lock_namespace.execute(conn, namespace=namespace)
        if await Q.count_live_jobs.fetchval(conn, namespace=namespace, cap=quota) >= quota:
            raise QuotaExceeded(namespace, quota)

    async def update_job(self, job_id: uuid.UUID, namespace: str,
                         change: Callable[[Row], JobColumns]) -> Row | None:
        """Read-modify-write one job under its row lock; ``change`` returns the new column
        values (or raises to abort). None if there is no such job."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.lock_job.fetchrow(conn, id=job_id, namespace=namespace)
            if row is None:
                return None
            updated = await Q.update_job.fetchrow(conn, id=job_id,
                                                  **_columns(change(dict(row))))
            await Q.notify.execute(conn, channel=WAKE_CHANNEL, payload="job")
        return _row(updated)

    async def pause_job(self, job_id: uuid.UUID, namespace: str) -> bool:
        return await Q.pause_job.fetchval(self.pool, id=job_id, namespace=namespace) is not None

    async def resume_job(
        self,
        job_id: uuid.UUID,
        namespace: str,
        plan: Callable[[Row], tuple[datetime | None, list[tuple[datetime, str]]]],
    ) -> str:
        """Resume a paused job: ``plan`` gives its next fire and the skipped fires to record.
        Returns 'resumed', 'not_paused' or 'missing'."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.lock_job.fetchrow(conn, id=job_id, namespace=namespace)
            if row is None:
                return "missing"
            if row["state"] != "paused":
                return "not_paused"
            next_fire_at, skipped = plan(dict(row))
            for at, reason in skipped:
                await Q.insert_record.execute(conn, job_id=job_id, scheduled_for=at,
                                              state="skipped", reason=reason, args=None)
            await Q.resume_job.execute(conn, id=job_id, next_fire_at=next_fire_at)
            await Q.notify.execute(conn, channel=WAKE_CHANNEL, payload="job")
        return "resumed"

    async def trigger_job(self, job_id: uuid.UUID, now: datetime,
                          args: dict[str, Any] | None = None) -> Row | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.insert_record.fetchrow(conn, job_id=job_id, scheduled_for=now,
                                                 state="queued", reason="triggered", args=args)
            await Q.notify.execute(conn, channel=WAKE_CHANNEL, payload="trigger")
        return _row(row)

    async def get_job(self, job_id: uuid.UUID, namespace: str) -> Row | None:
        found = await self._lookups.submit((job_id, namespace))
        if isinstance(found, Exception):
            raise found
        return found

    async def _get_batch(self, lookups: list[tuple[uuid.UUID, str]]
                         ) -> list[Row | Exception | None]:
        """One get_jobs for the batch."""
        return await _each_alone_if_failed(lookups, self._get_rows)

    async def _get_rows(self, lookups: list[tuple[uuid.UUID, str]]) -> list[Row | None]:
        rows = await Q.get_jobs.fetch(self.pool, ids=[job_id for job_id, _ in lookups],
                                      namespaces=[namespace for _, namespace in lookups])
        found: list[Row | None] = [None] * len(lookups)
        for record in rows:
            row = dict(record)
            found[row.pop("n") - 1] = row
        return found

    async def list_jobs(
        self,
        namespace: str,
        *,
        state: str | None,
        name: str | None,
        labels: dict[str, str] | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Row]:
        after_at, after_id = after if after else (None, None)
        # An empty filter is no filter (and list_jobs' `labels <> '{}'` needs a non-empty one).
        rows = await Q.list_jobs.fetch(self.pool, namespace=namespace, state=state, name=name,
                                       labels=labels or None, after_at=after_at, after_id=after_id,
                                       limit=limit)
        return [dict(r) for r in rows]

    async def cancel_job(self, job_id: uuid.UUID, namespace: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            if await Q.cancel_job.fetchval(conn, id=job_id, namespace=namespace) is None:
                return False
            await Q.cancel_job_runs.execute(conn, job_id=job_id,
                                            cancel_channel=CANCEL_CHANNEL)
            await Q.notify.execute(conn, channel=WAKE_CHANNEL, payload="job")
        return True

    async def job_exists(self, job_id: uuid.UUID, namespace: str) -> bool:
        return bool(await Q.job_exists.fetchval(self.pool, id=job_id, namespace=namespace))

    async def list_executions(self, job_id: uuid.UUID, *,
                              after: tuple[datetime, uuid.UUID] | None,
                              limit: int) -> list[Row]:
        # A generic plan: planned afresh for each call (custom plans), the statement spent
        # ~10 ms planning its scans of ~39 day partitions for ~1.5 ms of reading.
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            await Q.generic_plans.execute(conn)
            rows = await Q.list_executions.fetch(conn, job_id=job_id,
                                                 after_at=after[0] if after else None,
                                                 limit=limit)
        return [dict(r) for r in rows]

    async def list_dead(self, namespace: str, *, after: tuple[datetime, uuid.UUID] | None,
                        limit: int, job_id: uuid.UUID | None = None) -> list[Row]:
        after_at, after_id = after if after else (None, None)
        rows = await Q.list_dead.fetch(self.pool, namespace=namespace, after_at=after_at,
                                       after_id=after_id, limit=limit, job_id=job_id)
        return [dict(r) for r in rows]

    async def redrive(self, execution_id: uuid.UUID, namespace: str, *,
                      refused_kinds: Sequence[str] = ()) -> Row | None:
        """A dead execution queued again for one more attempt; None if it is not dead, its
        job is cancelled or of one of ``refused_kinds``."""
        lo, hi = window_of(execution_id)
        return _row(await Q.redrive_dead.fetchrow(self.pool, id=execution_id, lo=lo, hi=hi,
                                                  namespace=namespace, channel=WAKE_CHANNEL,
                                                  refused_kinds=list(refused_kinds)))

    async def get_execution(self, execution_id: uuid.UUID,
                            namespace: str) -> tuple[Row, list[Row]] | None:
        # One snapshot for both reads: at READ COMMITTED a result committed between them
        # showed an execution still running beside its finished attempt. The id's
        # millisecond of scheduled_for (lo, hi) prunes the other day partitions.
        lo, hi = window_of(execution_id)
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            row = await Q.get_execution.fetchrow(conn, id=execution_id, namespace=namespace,
                                                 lo=lo, hi=hi)
            if row is None:
                return None
            attempts = await Q.list_attempts.fetch(conn, execution_id=execution_id,
                                                   scheduled_for=row["scheduled_for"])
            return dict(row), [dict(a) for a in attempts]

    async def current_leader(self) -> LeaderInfo | None:
        row = await Q.current_leader.fetchrow(self.pool)
        if row is None:
            return None
        return LeaderInfo(row["epoch"], row["holder"], row["acquired_at"])

    async def waiting_by_band(self) -> dict[Priority, int]:
        rows = await Q.waiting_by_band.fetch(self.pool)
        waiting = dict.fromkeys(Priority, 0)
        for row in rows:
            waiting[Priority.from_rank(row["priority"])] += row["waiting"]
        return waiting
