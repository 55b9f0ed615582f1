"""The scheduler leader's repository on PostgreSQL (``jobsched.ports.LeaderRepository``).
Every write runs in ``fenced()``: it commits only while the caller's epoch is current."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg

from jobsched.adapters.postgres.listen import CANCEL_CHANNEL
from jobsched.adapters.postgres.pool import fenced
from jobsched.adapters.postgres.sql import Query, load_queries
from jobsched.adapters.postgres.worker import mark_published
from jobsched.domain.firing import DueJob, FireRecord, TickPlan
from jobsched.domain.priority import Priority
from jobsched.domain.states import ExecutionState
from jobsched.ports import Dispatch, ReapedExecution

log = logging.getLogger(__name__)

Q = load_queries("leader.sql")
T = TypeVar("T")

#: Day partitions of history are made this many days ahead (a leader outage shorter than
#: that never sends fires to the DEFAULT partition).
PARTITION_DAYS_AHEAD = 7
#: Partitions made or dropped (DDL): how long each lock is waited for, how many tries a
#: pass makes, and the pause between them; then the next pass tries again.
DROP_LOCK_TIMEOUT = "100ms"
DROP_TRIES = 5
DROP_RETRY_S = 0.2


def _purge_below(before: datetime, deferred: Sequence[datetime | None]) -> datetime | None:
    """Where the row-wise purge stops (None: nowhere to purge): the start of the day holding
    ``before`` (that day goes whole, when it is past), or lower, at a day whose drop is only
    deferred (its lock): that day is never deleted row by row, the next pass drops it."""
    below: datetime | None = before.astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)
    for lower in deferred:
        below = None if lower is None or below is None else min(below, lower)
    return below


def _dispatches(rows: Sequence[asyncpg.Record]) -> list[Dispatch]:
    """Re-sends and retries: the attempt with its kind and band, as first published."""
    return [Dispatch(r["id"], r["job_id"], r["attempt"], r["scheduled_for"], r["kind"],
                     Priority.from_rank(r["priority"])) for r in rows]


class PostgresLeaderStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim_epoch(self, epoch: int, holder: str, wait_s: float = 0.5,
                          tries: int = 5) -> bool:
        """Claim the fence for a newly elected leader (False: the epoch is not newer). If
        deposed leaders' open transactions hold the fence longer than ``wait_s``, their
        sessions are terminated and the claim is tried again."""
        async with self.pool.acquire() as conn:
            for attempt in range(1, tries + 1):
                try:
                    async with conn.transaction():
                        await Q.claim_lock_timeout.execute(conn,
                                                           timeout=f"{int(wait_s * 1000)}ms")
                        return await Q.claim_epoch.fetchval(conn, epoch=epoch,
                                                            holder=holder) is not None
                except asyncpg.LockNotAvailableError:
                    if attempt == tries:
                        raise
                    evicted = await Q.evict_fence_holders.fetch(conn)
                    log.warning("the fence was held by %d session(s) of deposed leaders; "
                                "terminated pids %s", len(evicted), [r["pid"] for r in evicted])
        return False

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
        executions to publish, how many jobs were selected (a full batch: call again), and
        the fires recorded as not run (missed or skipped), for counting. A batch that spans
        priority bands fires its highest band only.
        """
        async with fenced(self.pool, epoch) as conn:
            rows = await Q.select_due_jobs.fetch(conn, horizon=horizon or now, now=now,
                                                 limit=limit)
            if not rows:
                return [], 0, []
            selected = len(rows)
            top = rows[0]["priority"]  # the rows come highest band first
            if rows[-1]["priority"] != top:
                # The highest band alone in this transaction (the rest, locked, unchanged,
                # come in the next): a few high fires commit and go out without waiting
                # for a batch of low ones to be written with them.
                rows = [r for r in rows if r["priority"] == top]
                selected = limit  # the rest is due: reported as a full batch, to call again
            # By position: select_due_jobs selects DueJob's fields in their order
            # (tests/integration/test_batch_plans.py checks it); no dict per row.
            due = [DueJob(*r) for r in rows]
            tick = plan(due)
            jobs = {j.id: j for j in due}
            if tick.replace:
                replaced = await Q.replace_active.fetch(conn, job_ids=tick.replace, now=now)
                if replaced:
                    await Q.notify_cancel.execute(conn, channel=CANCEL_CHANNEL,
                                                  ids=[r["id"] for r in replaced])
            created = await Q.insert_executions.fetch(
                conn,
                epoch=epoch,
                job_ids=[f.job_id for f in tick.fires],
                scheduled_for=[f.scheduled_for for f in tick.fires],
                states=[str(f.state) for f in tick.fires],
                reasons=[f.reason for f in tick.fires],
                priorities=[jobs[f.job_id].priority for f in tick.fires],
            )
            # Every multi-row write locks rows in id order: no deadlock with another.
            advances = sorted(tick.advances, key=lambda a: a.job_id)
            await Q.advance_jobs.execute(
                conn,
                ids=[a.job_id for a in advances],
                next_fire_at=[a.next_fire_at for a in advances],
                runs=[a.runs for a in advances],
            )
        dispatches = [Dispatch(r["id"], r["job_id"], r["attempt"], r["scheduled_for"],
                               jobs[r["job_id"]].kind, Priority.from_rank(r["priority"]),
                               fresh=True)
                      for r in created if r["state"] == ExecutionState.QUEUED]
        not_run = [f for f in tick.fires if f.state != ExecutionState.QUEUED]
        return dispatches, selected, not_run

    async def requeue_retries(self, epoch: int, now: datetime, limit: int) -> list[Dispatch]:
        async with fenced(self.pool, epoch) as conn:
            return _dispatches(await Q.requeue_retries.fetch(conn, now=now, limit=limit,
                                                             epoch=epoch))

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        if execution_ids:
            await mark_published(self.pool, execution_ids, scheduled_for, attempts)

    async def unpublished(self, queued_before: datetime, limit: int) -> list[Dispatch]:
        return _dispatches(await Q.select_unpublished.fetch(
            self.pool, queued_before=queued_before, limit=limit))

    async def manual_unpublished(self, limit: int) -> list[Dispatch]:
        return _dispatches(await Q.select_manual_unpublished.fetch(self.pool, limit=limit))

    async def next_wake(self, lookahead_s: float = 0.0) -> datetime | None:
        wake_at: datetime | None = await Q.next_wake.fetchval(self.pool,
                                                              lookahead_s=lookahead_s)
        return wake_at

    async def reap_expired(self, epoch: int, limit: int,
                           lost_limit: int) -> list[ReapedExecution]:
        """Executions whose worker stopped renewing its lease are retried (a lost attempt
        does not count against max_attempts) or, after ``lost_limit`` of them, dead."""
        async with fenced(self.pool, epoch) as conn:
            rows = await Q.reap_expired.fetch(conn, limit=limit, lost_limit=lost_limit)
        return [ReapedExecution(r["id"], r["job_id"], r["attempt"],
                                ExecutionState(r["state"])) for r in rows]

    async def complete_finished_jobs(self, epoch: int, limit: int) -> int:
        """Active jobs with no further fire and no active run become completed."""
        async with fenced(self.pool, epoch) as conn:
            status = await Q.complete_finished_jobs.execute(conn, limit=limit)
        return int(status.split()[-1])

    async def ensure_partitions(self, epoch: int, now: datetime,
                                days_ahead: int = PARTITION_DAYS_AHEAD) -> list[str]:
        """Make the day partitions of history and of webhook deliveries from yesterday to
        ``days_ahead`` days after ``now`` that are missing (fenced): fires and events land
        in a partition of their own day, not in the DEFAULT one. Returns the partitions
        made (the executions ones, then the deliveries ones)."""
        start, stop = now - timedelta(days=1), now + timedelta(days=days_ahead)
        if not await Q.partitions_missing.fetchval(self.pool, start=start, stop=stop):
            return []
        # Locks in the hot path's order (jobs, then the partitions), each wait bounded: a
        # busy moment defers the days to a later pass (they are made a week ahead).
        async def make(conn: asyncpg.Connection) -> list[str]:
            await Q.lock_jobs_for_partitions.execute(conn)
            made: list[str] = await Q.ensure_partitions.fetchval(conn, start=start, stop=stop)
            return made + await Q.ensure_delivery_partitions.fetchval(conn, start=start,
                                                                      stop=stop)

        done, made = await self._ddl(epoch, make)
        if not done or made is None:
            log.info("partitions to make: tables busy, made on a later pass")
            return []
        if made:
            log.info("made history partitions %s", ", ".join(made))
        return made

    async def _ddl(self, epoch: int, work: Callable[[asyncpg.Connection], Awaitable[T]],
                   ) -> tuple[bool, T | None]:
        """``work`` (partitions made or dropped) in a fenced transaction whose every lock is
        waited for at most ``DROP_LOCK_TIMEOUT``, tried up to ``DROP_TRIES`` times:
        (True, its result), or (False, None) when the tables stayed busy."""
        for attempt in range(1, DROP_TRIES + 1):
            try:
                async with fenced(self.pool, epoch) as conn:
                    await Q.drop_lock_timeout.execute(conn, timeout=DROP_LOCK_TIMEOUT)
                    return True, await work(conn)
            except asyncpg.LockNotAvailableError:
                if attempt < DROP_TRIES:
                    await asyncio.sleep(DROP_RETRY_S)
        return False, None

    async def drop_expired_partitions(self, epoch: int, before: datetime,
                                      ) -> tuple[list[str], list[datetime | None]]:
        """Drop the day partitions of executions (with their attempts) wholly before
        ``before`` that hold no unfinished execution, one fenced transaction each. A drop
        that cannot get its lock within ``DROP_LOCK_TIMEOUT`` is tried again, up to
        ``DROP_TRIES`` times, then left for the next pass. Returns the partitions dropped
        and the lower bounds of those left for want of the lock (None: MINVALUE)."""
        return await self._drop_expired(epoch, before, Q.expired_partitions, Q.drop_partition)

    async def _drop_expired(self, epoch: int, before: datetime, expired: Query, drop: Query,
                            ) -> tuple[list[str], list[datetime | None]]:
        dropped: list[str] = []
        deferred: list[datetime | None] = []
        for row in await expired.fetch(self.pool, before=before):
            partition = row["partition_name"]
            done, name = await self._ddl(
                epoch, functools.partial(drop.fetchval, partition=partition, before=before))
            if not done:
                log.info("retention: partition %s busy, dropped on a later pass", partition)
                deferred.append(row["lower"])
            elif name is not None:
                dropped.append(name)
        if dropped:
            log.info("retention dropped history partitions %s", ", ".join(dropped))
        return dropped, deferred

    async def purge_history(self, epoch: int, before: datetime, batch: int) -> int:
        """One retention pass: the day partitions wholly before ``before`` are dropped
        (their rows are not counted); then executions of earlier days finished before
        ``before`` that no drop took (oldest first, by the finished_at index), and, job by
        job, those beyond the history limits of the jobs that set one; a fenced batch per
        transaction. Returns how many rows were deleted. The cost is the rows deleted plus
        the kept history of limited jobs: never a scan of all history."""
        _, deferred = await self.drop_expired_partitions(epoch, before)
        before_day = _purge_below(before, deferred)
        deleted = 0
        if before_day is not None:
            deleted += await self._purge_batches(epoch, Q.purge_expired, batch, before=before,
                                                 before_day=before_day)
        after: uuid.UUID | None = None
        while True:
            limited = await Q.limited_jobs.fetch(self.pool, after=after, limit=batch)
            for job in limited:
                for state, keep in ((ExecutionState.SUCCEEDED, job["keep_succeeded"]),
                                    (ExecutionState.DEAD, job["keep_failed"])):
                    if keep is None:
                        continue
                    deleted += await self._purge_batches(
                        epoch, Q.purge_job_history, batch, job_id=job["id"], state=str(state),
                        keep=keep)
            if len(limited) < batch:
                return deleted
            after = limited[-1]["id"]

    async def purge_deliveries(self, epoch: int, before: datetime, batch: int) -> int:
        """Webhook delivery retention, as ``purge_history`` does history's: the day
        partitions of deliveries wholly before ``before`` are dropped, unless one holds a
        delivery still to be made (pending or failed); then the delivered and exhausted
        deliveries of earlier events that no drop took are deleted in fenced batches.
        Deliveries still to be made are never deleted. Returns how many rows were deleted
        (dropped partitions' rows not counted)."""
        _, deferred = await self._drop_expired(epoch, before, Q.expired_delivery_partitions,
                                               Q.drop_delivery_partition)
        before_day = _purge_below(before, deferred)
        if before_day is None:
            return 0
        return await self._purge_batches(epoch, Q.purge_deliveries, batch,
                                         before_day=before_day)

    async def _purge_batches(self, epoch: int, purge: Query, batch: int,
                             **params: object) -> int:
        """``purge`` (a DELETE of at most ``limit`` rows) in fenced transactions of one
        batch each, until a batch comes back short; returns the rows deleted."""
        deleted = 0
        while True:
            async with fenced(self.pool, epoch) as conn:
                await Q.purge_by_key.execute(conn)
                status = await purge.execute(conn, limit=batch, **params)
            count = int(status.split()[-1])
            deleted += count
            if count < batch:
                return deleted
