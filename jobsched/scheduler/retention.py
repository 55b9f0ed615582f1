"""History retention, run by the leader: a global age limit and per-job history limits
(like Kubernetes' successfulJobsHistoryLimit), fenced by the leader's epoch so only one
scheduler ever purges. History is partitioned by day (migration 014), and webhook deliveries
too (migration 016): each pass first makes the partitions of the days ahead, then drops the
days wholly past the age limit; what no drop takes is purged in bounded batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from jobsched.backoff import sleep_unless
from jobsched.metrics import Metrics
from jobsched.ports import LeaderRepository, WorkflowLeaderRepository

log = logging.getLogger(__name__)

BATCH = 5_000


async def run_retention(store: LeaderRepository, current_epoch: Callable[[], int | None],
                        retention_days: float, interval_s: float,
                        stop: asyncio.Event, metrics: Metrics | None = None,
                        workflows: WorkflowLeaderRepository | None = None) -> None:
    """While this process leads, purge once per interval (webhook deliveries and workflow
    runs too). Each pass is timed
    (``jobsched_scheduler_retention_seconds``): a pass that grows with the history rather
    than with what it deletes shows there, the soak benchmark reads it."""
    retention = timedelta(days=retention_days)
    while not stop.is_set():
        epoch = current_epoch()
        if epoch is not None:
            started = time.perf_counter()
            try:
                now = datetime.now(UTC)
                await store.ensure_partitions(epoch, now)
                before = now - retention
                deleted = await store.purge_history(epoch, before, BATCH)
                if deleted:
                    log.info("retention purged %d executions", deleted)
                deliveries = await store.purge_deliveries(epoch, before, BATCH)
                if deliveries:
                    log.info("retention purged %d webhook deliveries", deliveries)
                if workflows is not None:
                    runs = await workflows.purge_runs(epoch, before, BATCH)
                    if runs:
                        log.info("retention purged %d workflow runs", runs)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("retention pass failed: %r", exc)
            if metrics is not None:
                metrics.retention_duration.observe({}, time.perf_counter() - started)
        await sleep_unless(stop, interval_s)
