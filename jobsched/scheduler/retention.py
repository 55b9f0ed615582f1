"""History retention, run by the leader: a global age limit and per-job history limits
(like Kubernetes' successfulJobsHistoryLimit), purged in bounded batches, fenced by the
leader's epoch so only one scheduler ever purges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from jobsched.adapters import queries as q
from jobsched.adapters.postgres import JobStore

log = logging.getLogger(__name__)

BATCH = 5_000


async def purge_history(pool: asyncpg.Pool, epoch: int, now: datetime,
                        retention: timedelta) -> int:
    """One pass; returns how many executions were deleted."""
    deleted = 0
    for statement, args in ((q.PURGE_EXPIRED, (now - retention, BATCH)),
                            (q.PURGE_OVER_LIMIT, (BATCH,))):
        while True:
            async with pool.acquire() as conn, conn.transaction():
                await JobStore._check_epoch(conn, epoch)
                status = await conn.execute(statement, *args)
            count = int(status.split()[-1])
            deleted += count
            if count < BATCH:
                break
    return deleted


async def run_retention(pool: asyncpg.Pool, current_epoch: Callable[[], int | None],
                        retention_days: float, interval_s: float,
                        stop: asyncio.Event) -> None:
    """While this process leads, purge once per interval."""
    retention = timedelta(days=retention_days)
    while not stop.is_set():
        epoch = current_epoch()
        if epoch is not None:
            try:
                deleted = await purge_history(pool, epoch, datetime.now(UTC), retention)
                if deleted:
                    log.info("retention purged %d executions", deleted)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("retention pass failed: %r", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
