"""The scheduler role: stand in the election; while leader, fire due jobs on time.

Each tick is set-based: one fenced transaction locks up to ``scheduler_batch_size`` due jobs,
inserts their executions and advances their ``next_fire_at``; then the batch is published
with all confirms in flight at once. Anything committed but unconfirmed stays in the
outbox (``published_at IS NULL``) and is re-published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from datetime import UTC, datetime, timedelta

import aiozk

from jobsched.adapters.postgres import Dispatch, DueJob, JobStore, StaleEpochError
from jobsched.adapters.rabbitmq import AttemptMessage, Broker
from jobsched.adapters.zookeeper import LeaderCampaign, LeaderTerm
from jobsched.domain.schedule import Schedule, ScheduleError, coalesce_next_fire, parse_schedule
from jobsched.settings import Settings

log = logging.getLogger(__name__)

Fire = tuple[uuid.UUID, datetime, datetime | None]


@functools.lru_cache(maxsize=65_536)
def _schedule(expression: str, timezone: str) -> Schedule:
    return parse_schedule(expression, timezone)


def plan_fires(jobs: list[DueJob], now: datetime) -> list[Fire]:
    """One execution per due job at its due time; missed fires since coalesce (run_once)."""
    fires = []
    for job in jobs:
        try:
            following = coalesce_next_fire(_schedule(job.schedule, job.timezone),
                                           job.next_fire_at, now)
        except (ScheduleError, ValueError) as exc:
            log.error("job %s has an unusable schedule (%s); firing it no more", job.id, exc)
            following = None
        fires.append((job.id, job.next_fire_at, following))
    return fires


class Scheduler:
    def __init__(
        self, settings: Settings, store: JobStore, broker: Broker, zk: aiozk.ZKClient
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.campaign = LeaderCampaign(zk, settings.instance)
        self.wake = asyncio.Event()
        self.term: LeaderTerm | None = None
        self.fired = 0

    @property
    def is_leader(self) -> bool:
        return self.term is not None and not self.term.ended.is_set()

    def describe(self) -> dict[str, object]:
        return {"leader": self.is_leader, "epoch": self.term.epoch if self.term else None}

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                term = await _until_stopped(self.campaign.elected(), stop)
                if term is None:
                    break
                if not await self.store.claim_epoch(term.epoch, self.settings.instance):
                    log.warning("epoch %d is not newer than the stored one; re-joining",
                                term.epoch)
                    await self.campaign.resign()
                    await _sleep(stop, delay)
                    continue
                self.term = term
                log.info("leader with epoch %d", term.epoch)
                await self._lead(term, stop)
                delay = 0.2
            except StaleEpochError as exc:
                log.warning("deposed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - the loop outlives any dependency error
                log.warning("scheduler error (%r); re-joining the election in %.1fs", exc, delay)
                await _sleep(stop, delay)
                delay = min(delay * 2, 5.0)
            finally:
                if self.term is not None:
                    self.term.ended.set()
                    self.term = None
                await self.campaign.resign()
        log.info("scheduler stopped")

    async def _lead(self, term: LeaderTerm, stop: asyncio.Event) -> None:
        epoch = term.epoch
        # A previous leader may have died between commit and publish: re-publish at once.
        await self._republish(datetime.now(UTC))
        last_republish = datetime.now(UTC)
        while not stop.is_set() and not term.ended.is_set():
            self.wake.clear()
            now = datetime.now(UTC)
            try:
                await self._fire_due(epoch, now)
                await self._requeue_retries(epoch, now)
                if now - last_republish >= timedelta(seconds=self.settings.republish_after_s / 2):
                    await self._republish(now - timedelta(seconds=self.settings.republish_after_s))
                    last_republish = now
                wake_at = await self.store.next_wake()
            except StaleEpochError:
                raise
            except (TimeoutError, OSError) as exc:
                log.warning("leader tick failed (%r); retrying", exc)
                wake_at = None
            timeout = self.settings.scheduler_poll_s
            if wake_at is not None:
                timeout = min(timeout, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            await _first_of(timeout, self.wake, term.ended, stop)

    async def _fire_due(self, epoch: int, now: datetime) -> None:
        batch = self.settings.scheduler_batch_size
        while True:
            dispatches, due = await self.store.fire_due_jobs(
                epoch, now, batch, lambda jobs: plan_fires(jobs, now)
            )
            await self._publish(dispatches)
            self.fired += len(dispatches)
            if due < batch:
                return

    async def _requeue_retries(self, epoch: int, now: datetime) -> None:
        batch = self.settings.scheduler_batch_size
        while dispatches := await self.store.requeue_retries(epoch, now, batch):
            await self._publish(dispatches)
            if len(dispatches) < batch:
                return

    async def _republish(self, queued_before: datetime) -> None:
        dispatches = await self.store.unpublished(queued_before, self.settings.scheduler_batch_size)
        if dispatches:
            log.info("re-publishing %d unconfirmed executions", len(dispatches))
            await self._publish(dispatches)

    async def _publish(self, dispatches: list[Dispatch]) -> None:
        if not dispatches:
            return
        confirmed = await self.broker.publish_many(
            [AttemptMessage(d.execution_id, d.job_id, d.attempt) for d in dispatches]
        )
        done = [d.execution_id for d, ok in zip(dispatches, confirmed, strict=True) if ok]
        await self.store.mark_published(done)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _first_of(timeout: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _until_stopped(coro: object, stop: asyncio.Event) -> LeaderTerm | None:
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopping.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None
