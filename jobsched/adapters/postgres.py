"""PostgreSQL adapter (asyncpg): the pool, migrations and every read and write of the roles."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from jobsched.adapters import queries as q

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a lost, refused or not-yet-usable connection raises: the server is unreachable,
# restarting or failing over (asyncpg's InternalClientError comes from a connection that
# broke in the middle of an operation). Callers answer 503 or retry; never a 500.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.InternalClientError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError, asyncpg.exceptions.ReadOnlySQLTransactionError,
)
MIGRATION_LOCK_KEY = 0x6A6F6273  # "jobs": one advisory lock for every migrating process


class StaleEpochError(Exception):
    """This leader's epoch is no longer the current one: it must stop writing."""


class QuotaExceeded(Exception):
    """The namespace already holds its quota of live (active or paused) jobs."""

    def __init__(self, namespace: str, quota: int) -> None:
        super().__init__(f"namespace {namespace!r} has {quota} live jobs, its quota")
        self.namespace = namespace
        self.quota = quota


class IdempotencyConflict(Exception):
    """The Idempotency-Key already names a job created from a different body."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"the key names job {job_id}, created from a different body")
        self.job_id = job_id


# Below quota - margin, creates count without locking (the count moves by at most the
# creates in flight); nearer, they serialize per namespace so the quota is exact.
QUOTA_LOCK_MARGIN = 64


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec: orjson both ways, and COPY of jsonb columns works.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Releasing a connection to the pool: nothing to reset on the server. jobsched keeps
    no session state on pooled connections (its lock_timeout and advisory locks are
    transaction-scoped; LISTEN has connections of its own), so asyncpg's default RESET
    ALL / UNLISTEN / pg_advisory_unlock_all round trip on every release is skipped.
    asyncpg still rolls back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        timeout=10,
    )
    assert pool is not None
    return pool


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("jobsched.adapters") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply pending numbered migrations under an advisory lock; returns the applied names."""
    conn = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(name)
                log.info("applied migration %s", name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied


async def create_database(dsn: str) -> bool:
    """Create the database the URL names if it is missing (via the `postgres` database)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return False
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class DueJob:
    id: uuid.UUID
    schedule: str
    timezone: str
    next_fire_at: datetime
    misfire: str = "run_once"
    max_catchup: int = 10
    starting_deadline_s: float | None = None
    concurrency: str = "allow"
    end_at: datetime | None = None
    max_runs: int | None = None
    run_count: int = 0
    jitter_s: float = 0.0
    busy: bool = False


@dataclass(frozen=True, slots=True)
class FireRecord:
    """One row the leader writes: an execution to run (queued) or a recorded non-run."""

    job_id: uuid.UUID
    scheduled_for: datetime
    state: str = "queued"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobAdvance:
    job_id: uuid.UUID
    next_fire_at: datetime | None
    runs: int


@dataclass
class TickPlan:
    fires: list[FireRecord]
    advances: list[JobAdvance]
    replace: list[uuid.UUID]  # jobs whose active runs give way (concurrency=replace)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """An execution attempt to put on the queue."""

    execution_id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    due: datetime | None = None  # the fire time, for lateness; None for re-sends


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    execution_id: uuid.UUID
    attempt: int
    state: str  # the execution's next state: succeeded | retrying | dead
    outcome: str  # the attempt's outcome: succeeded | failed | timed_out
    exit_code: int | None
    error: str | None
    output: str | None
    retry_in_s: float
    reason: str | None = None
    started_at: datetime | None = None  # when the run really began (after any hold)


class JobStore:
    """The roles' port onto PostgreSQL. Leader writes take the epoch and are fenced by it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)

    # --- api ---------------------------------------------------------------------------

    async def insert_job(self, values: Sequence[Any]) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.INSERT_JOB, *values)
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "job")
        assert row is not None
        return row

    async def create_job(
        self,
        values: Sequence[Any],
        *,
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        idempotency_ttl_s: float = 86_400.0,
        quota: int = 0,
        notify: bool = True,
    ) -> tuple[Mapping[str, Any], bool]:
        """Insert a job (``values`` as for insert_job) under the namespace's quota. With an
        idempotency key, a repeat of an identical create answers the first job instead:
        returns the job row (with ``last_execution``) and whether it is such a replay.
        ``notify`` wakes the leader (only needed for a job due before its next look)."""
        namespace = values[1]
        if idempotency_key is None and not quota:
            # The common case is one statement, one round trip, one commit.
            row = await self.pool.fetchrow(q.INSERT_JOB_NOTIFYING, *values, notify,
                                           q.NOTIFY_CHANNEL)
            assert row is not None
            return {**dict(row), "last_execution": None}, False
        async with self.pool.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                if first is not None:
                    return first, True
            if quota:
                await self._within_quota(conn, namespace, quota)
            row = await conn.fetchrow(q.INSERT_JOB_KEYED, *values, idempotency_key, digest)
            if row is None:  # a concurrent create with this key won the race
                assert idempotency_key is not None
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                assert first is not None
                return first, True
            if notify:
                await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "job")
        return {**dict(row), "last_execution": None}, False

    @staticmethod
    async def _replay(conn: asyncpg.Connection, namespace: str, key: str,
                      digest: bytes | None, ttl_s: float) -> asyncpg.Record | None:
        found = await conn.fetchrow(q.GET_JOB_BY_IDEMPOTENCY_KEY, namespace, key, ttl_s)
        if found is None:
            return None
        if found["expired"]:
            await conn.execute(q.RELEASE_IDEMPOTENCY_KEY, found["id"], ttl_s)
            return None
        if found["idempotency_digest"] != digest:
            raise IdempotencyConflict(found["id"])
        return await conn.fetchrow(q.GET_JOB, found["id"], namespace)

    @staticmethod
    async def _within_quota(conn: asyncpg.Connection, namespace: str, quota: int) -> None:
        live = await conn.fetchval(q.COUNT_LIVE_JOBS, namespace, quota)
        if live < quota - QUOTA_LOCK_MARGIN:
            return
        await conn.execute(q.LOCK_NAMESPACE, namespace)
        if await conn.fetchval(q.COUNT_LIVE_JOBS, namespace, quota) >= quota:
            raise QuotaExceeded(namespace, quota)

    async def update_job(
        self,
        job_id: uuid.UUID,
        namespace: str,
        change: Callable[[asyncpg.Record], Sequence[Any]],
    ) -> asyncpg.Record | None:
        """Read-modify-write one job under its row lock; ``change`` returns the new column
        values (or raises to abort). None if there is no such job."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.LOCK_JOB, job_id, namespace)
            if row is None:
                return None
            updated = await conn.fetchrow(q.UPDATE_JOB, job_id, *change(row))
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "job")
        return updated

    async def pause_job(self, job_id: uuid.UUID, namespace: str) -> bool:
        return await self.pool.fetchval(q.PAUSE_JOB, job_id, namespace) is not None

    async def resume_job(
        self,
        job_id: uuid.UUID,
        namespace: str,
        plan: Callable[[asyncpg.Record], tuple[datetime | None, list[tuple[datetime, str]]]],
    ) -> str:
        """Resume a paused job: ``plan`` gives its next fire and the skipped fires to record.
        Returns 'resumed', 'not_paused' or 'missing'."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.LOCK_JOB, job_id, namespace)
            if row is None:
                return "missing"
            if row["state"] != "paused":
                return "not_paused"
            next_fire_at, skipped = plan(row)
            for at, reason in skipped:
                await conn.execute(q.INSERT_RECORD, job_id, at, "skipped", reason)
            await conn.execute(q.RESUME_JOB, job_id, next_fire_at)
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "job")
        return "resumed"

    async def trigger_job(self, job_id: uuid.UUID, now: datetime) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.INSERT_RECORD, job_id, now, "queued", "triggered")
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "trigger")
        return row

    async def get_job(self, job_id: uuid.UUID, namespace: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q.GET_JOB, job_id, namespace)

    async def list_jobs(
        self,
        namespace: str,
        *,
        state: str | None,
        name: str | None,
        labels: dict[str, str] | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        created, last_id = after if after else (None, None)
        return await self.pool.fetch(
            q.LIST_JOBS, namespace, state, name, labels, created, last_id, limit
        )

    async def cancel_job(self, job_id: uuid.UUID, namespace: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.CANCEL_JOB, job_id, namespace, q.CANCEL_CHANNEL)
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "job")
        return bool(row and row["jobs"])

    async def job_exists(self, job_id: uuid.UUID, namespace: str) -> bool:
        return bool(await self.pool.fetchval(q.JOB_EXISTS, job_id, namespace))

    async def list_executions(
        self, job_id: uuid.UUID, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(q.LIST_EXECUTIONS, job_id, after[0] if after else None,
                                     limit)

    async def list_dead(
        self, namespace: str, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[asyncpg.Record]:
        finished, last_id = after if after else (None, None)
        return await self.pool.fetch(q.LIST_DEAD, namespace, finished, last_id, limit)

    async def redrive(self, execution_id: uuid.UUID, namespace: str) -> asyncpg.Record | None:
        """A dead execution queued again for one more attempt; None if it is not dead."""
        return await self.pool.fetchrow(q.REDRIVE_DEAD, execution_id, namespace,
                                        q.NOTIFY_CHANNEL)

    async def get_execution(
        self, execution_id: uuid.UUID, namespace: str
    ) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(q.GET_EXECUTION, execution_id, namespace)
            if row is None:
                return None
            return row, await conn.fetch(q.LIST_ATTEMPTS, execution_id)

    # --- scheduler leader --------------------------------------------------------------

    async def claim_epoch(self, epoch: int, holder: str) -> bool:
        return await self.pool.fetchval(q.CLAIM_EPOCH, epoch, holder) is not None

    async def current_leader(self) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q.CURRENT_LEADER)

    @staticmethod
    async def _check_epoch(conn: asyncpg.Connection, epoch: int) -> None:
        current = await conn.fetchval(q.CHECK_EPOCH)
        if current != epoch:
            raise StaleEpochError(f"epoch {epoch} superseded by {current}")

    async def fire_due_jobs(
        self,
        epoch: int,
        now: datetime,
        limit: int,
        plan: Callable[[list[DueJob]], TickPlan],
        horizon: datetime | None = None,
    ) -> tuple[list[Dispatch], int, list[FireRecord]]:
        """Record the fires of due jobs and advance them, in one fenced transaction.

        Jobs of concurrency 'allow' due up to ``horizon`` are included (fired ahead; the
        worker holds them until due), others only once due at ``now``. Returns the
        executions to publish, how many jobs were selected, and the fires recorded as not
        run (missed or skipped), for counting.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_epoch(conn, epoch)
            rows = await conn.fetch(q.SELECT_DUE_JOBS, horizon or now, limit, now)
            if not rows:
                return [], 0, []
            tick = plan([DueJob(**dict(r)) for r in rows])
            if tick.replace:
                replaced = await conn.fetch(q.REPLACE_ACTIVE, tick.replace, now)
                await self._notify_cancel(conn, [r["id"] for r in replaced])
            created = await conn.fetch(
                q.INSERT_EXECUTIONS,
                [f.job_id for f in tick.fires],
                [f.scheduled_for for f in tick.fires],
                epoch,
                [f.state for f in tick.fires],
                [f.reason for f in tick.fires],
            )
            advances = sorted(tick.advances, key=lambda a: a.job_id)  # id order, as above
            await conn.execute(
                q.ADVANCE_JOBS,
                [a.job_id for a in advances],
                [a.next_fire_at for a in advances],
                [a.runs for a in advances],
            )
        dispatches = [Dispatch(r["id"], r["job_id"], r["attempt"], r["scheduled_for"])
                      for r in created if r["state"] == "queued"]
        not_run = [f for f in tick.fires if f.state != "queued"]
        return dispatches, len(rows), not_run

    @staticmethod
    async def _notify_cancel(conn: asyncpg.Connection, execution_ids: list[uuid.UUID]) -> None:
        if execution_ids:
            await conn.execute(
                "SELECT pg_notify($1, id::text) FROM unnest($2::uuid[]) AS id",
                q.CANCEL_CHANNEL,
                execution_ids,
            )

    async def requeue_retries(self, epoch: int, now: datetime, limit: int) -> list[Dispatch]:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_epoch(conn, epoch)
            rows = await conn.fetch(q.REQUEUE_RETRIES, now, limit, epoch)
        return [Dispatch(r["id"], r["job_id"], r["attempt"]) for r in rows]

    async def mark_published(self, execution_ids: Sequence[uuid.UUID]) -> None:
        if execution_ids:
            await self.pool.execute(q.MARK_PUBLISHED, list(execution_ids))

    async def unpublished(self, queued_before: datetime, limit: int) -> list[Dispatch]:
        rows = await self.pool.fetch(q.SELECT_UNPUBLISHED, queued_before, limit)
        return [Dispatch(r["id"], r["job_id"], r["attempt"]) for r in rows]

    async def manual_unpublished(self, limit: int) -> list[Dispatch]:
        rows = await self.pool.fetch(q.SELECT_MANUAL_UNPUBLISHED, limit)
        return [Dispatch(r["id"], r["job_id"], r["attempt"]) for r in rows]

    async def next_wake(self, lookahead_s: float = 0.0) -> datetime | None:
        return await self.pool.fetchval(q.NEXT_WAKE, lookahead_s)

    # --- worker ------------------------------------------------------------------------

    async def claim_executions(
        self, claims: Sequence[tuple[uuid.UUID, int]], worker: str, lease_s: float
    ) -> list[asyncpg.Record]:
        claims = sorted(claims)  # every multi-row write locks rows in id order: no deadlock
        return await self.pool.fetch(
            q.CLAIM_EXECUTIONS, [c[0] for c in claims], [c[1] for c in claims], worker, lease_s
        )

    async def hand_back(self, execution_id: uuid.UUID, attempt: int, worker: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.HAND_BACK, execution_id, attempt, worker)
            await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "retry")

    async def finish_attempts(
        self, results: Sequence[FinishedAttempt], worker: str
    ) -> dict[uuid.UUID, str]:
        """Record a batch of results; returns the executions this worker still held."""
        results = sorted(results, key=lambda r: r.execution_id)  # rows locked in id order
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                q.FINISH_EXECUTIONS,
                [r.execution_id for r in results],
                [r.attempt for r in results],
                [r.state for r in results],
                [r.outcome for r in results],
                [r.exit_code for r in results],
                [r.error for r in results],
                [r.output for r in results],
                [r.retry_in_s for r in results],
                worker,
                [r.reason for r in results],
                [r.started_at for r in results],
            )
            if any(r.state == "retrying" for r in results):
                await conn.execute(q.NOTIFY_WAKE, q.NOTIFY_CHANNEL, "retry")
        return {r["id"]: r["state"] for r in rows}


class TokenStore:
    """API tokens: only their SHA-256 digest is stored (see jobsched.domain.auth)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, digest: bytes, hint: str, namespace: str, role: str,
                     name: str | None, expires_at: datetime | None) -> asyncpg.Record:
        row = await self.pool.fetchrow(q.INSERT_TOKEN, digest, hint, namespace, role, name,
                                       expires_at)
        assert row is not None
        return row

    async def authenticate(self, digest: bytes) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q.AUTHENTICATE_TOKEN, digest)

    async def list(self, namespace: str | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(q.LIST_TOKENS, namespace)

    async def revoke(self, token_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q.REVOKE_TOKEN, token_id)


class HeldExecutions:
    """Worker-side statements about the executions it holds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def heartbeat(
        self, execution_ids: Sequence[uuid.UUID], worker: str, lease_s: float
    ) -> set[uuid.UUID]:
        """Extend the leases in one statement; returns the ids still held."""
        rows = await self.pool.fetch(q.HEARTBEAT, sorted(execution_ids), worker, lease_s)
        return {r["id"] for r in rows}

    async def close_attempt(
        self, execution_id: uuid.UUID, attempt: int, outcome: str, error: str | None,
        output: str | None, exit_code: int | None,
    ) -> None:
        await self.pool.execute(q.CLOSE_ATTEMPT, execution_id, attempt, outcome, error,
                                output, exit_code)


async def claim_epoch_evicting(
    pool: asyncpg.Pool, epoch: int, holder: str, wait_s: float = 0.5, tries: int = 5
) -> bool:
    """Claim the fence for a newly elected leader (False: the epoch is not newer). If
    deposed leaders' open transactions hold the fence longer than ``wait_s``, their
    sessions are terminated and the claim is tried again."""
    async with pool.acquire() as conn:
        for attempt in range(1, tries + 1):
            try:
                async with conn.transaction():
                    await conn.execute(q.CLAIM_LOCK_TIMEOUT, f"{int(wait_s * 1000)}ms")
                    return await conn.fetchval(q.CLAIM_EPOCH, epoch, holder) is not None
            except asyncpg.LockNotAvailableError:
                if attempt == tries:
                    raise
                evicted = await conn.fetch(q.EVICT_FENCE_HOLDERS)
                log.warning("the fence was held by %d session(s) of deposed leaders; "
                            "terminated pids %s", len(evicted), [r["pid"] for r in evicted])
    return False


async def complete_finished_jobs(pool: asyncpg.Pool, epoch: int, limit: int) -> int:
    """Fenced: active jobs with no further fire and no active run become completed."""
    async with pool.acquire() as conn, conn.transaction():
        await JobStore._check_epoch(conn, epoch)
        status = await conn.execute(q.COMPLETE_FINISHED_JOBS, limit)
    return int(status.split()[-1])


async def reap_expired(
    pool: asyncpg.Pool, epoch: int, now: datetime, limit: int
) -> list[asyncpg.Record]:
    """Fenced: executions whose worker stopped renewing its lease are retried or dead."""
    async with pool.acquire() as conn, conn.transaction():
        await JobStore._check_epoch(conn, epoch)
        return await conn.fetch(q.REAP_EXPIRED, now, limit)


class ReplicaReads:
    """Read-only queries routed to a read replica, with the primary as the answer of last
    resort: when the replica fails (down, in recovery conflict) the read goes to the
    primary, and the replica is left alone for ``rest_s``; a row the replica does not
    have yet (replication lag after a create) is looked up on the primary too."""

    def __init__(self, replica: JobStore, primary: JobStore, rest_s: float = 5.0) -> None:
        self.replica = replica
        self.primary = primary
        self.rest_s = rest_s
        self._resting_until = 0.0
        self.served = {"replica": 0, "primary": 0}

    @property
    def healthy(self) -> bool:
        return asyncio.get_running_loop().time() >= self._resting_until

    async def read(self, query: Callable[[JobStore], Awaitable[T]], *,
                   confirm_missing: bool = False) -> T:
        if self.healthy:
            try:
                found = await query(self.replica)
            except Exception as exc:  # noqa: BLE001 - any replica failure: use the primary
                self._resting_until = asyncio.get_running_loop().time() + self.rest_s
                log.warning("read replica failed (%r); reading from the primary for %.0fs",
                            exc, self.rest_s)
            else:
                if not (confirm_missing and not found):
                    self.served["replica"] += 1
                    return found
        self.served["primary"] += 1
        return await query(self.primary)

    def describe(self) -> dict[str, Any]:
        return {"healthy": self.healthy, **{f"served_{k}": v for k, v in self.served.items()}}


class WakeListener:
    """A dedicated connection LISTENing on a channel; reconnects with capped backoff.
    ``on_wake`` gets the payload ("" after a reconnect, when anything may have been missed).
    """

    def __init__(self, dsn: str, on_wake: Callable[[str], None],
                 channel: str = q.NOTIFY_CHANNEL) -> None:
        self.dsn = dsn
        self.on_wake = on_wake
        self.channel = channel

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(self.channel, self._notified)
                delay = 0.1
                self.on_wake("")  # anything missed while disconnected is picked up now
                while not stop.is_set() and not conn.is_closed():
                    await _wait(stop, 5.0)
                    if not stop.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("wake listener lost its connection: %r", exc)
                await _wait(stop, delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    await _close_quietly(conn.close())

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_wake(payload)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


async def _close_quietly(closing: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(closing, 2)
    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
        pass
