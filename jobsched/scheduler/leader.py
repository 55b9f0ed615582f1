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
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from jobsched.backoff import Backoff
from jobsched.domain.firing import plan_tick
from jobsched.domain.states import ExecutionState
from jobsched.metrics import Metrics
from jobsched.ports import (
    Broker,
    CandidacyLost,
    Coordinator,
    Dispatch,
    LeaderRepository,
    LeaderTerm,
    StaleEpochError,
    WorkflowLeaderRepository,
)
from jobsched.scheduler.publisher import Publisher
from jobsched.settings import Settings

log = logging.getLogger(__name__)

REAP_INTERVAL = timedelta(seconds=1)
OBSERVE_INTERVAL = timedelta(seconds=5)
#: Runs are counted once they ended this long ago: a run's finished_at is its ending
#: transaction's start, committed a moment later.
RUN_COUNT_LAG = timedelta(seconds=5)


class Scheduler:
    def __init__(
        self, settings: Settings, store: LeaderRepository, broker: Broker,
        coordinator: Coordinator, metrics: Metrics | None = None,
        workflows: WorkflowLeaderRepository | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("scheduler", settings.instance)
        self.coordinator = coordinator
        self.store = store
        self.workflows = workflows
        self.broker = broker
        self.campaign = coordinator.campaign(settings.instance)
        self.wake = asyncio.Event()
        self.term: LeaderTerm | None = None
        self.fired = 0
        self.reaped = 0
        self.not_run: dict[str, int] = {}
        self._observing: asyncio.Task[None] | None = None
        self.publisher: Publisher | None = None
        self._runs_counted_until: datetime | None = None

    @property
    def is_leader(self) -> bool:
        return self.term is not None and not self.term.ended.is_set()

    @property
    def epoch(self) -> int | None:
        """The epoch of the current term, or None while not leading."""
        return self.term.epoch if self.term is not None and self.is_leader else None

    def describe(self) -> dict[str, object]:
        return {"leader": self.is_leader, "epoch": self.term.epoch if self.term else None}

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                term = await _until_stopped(self.campaign.elected(), stop)
                if term is None:
                    break
                if not await self.store.claim_epoch(term.epoch, self.settings.instance):
                    log.warning("epoch %d is not newer than the stored one; re-joining",
                                term.epoch)
                    await self.campaign.resign()
                    await backoff.wait(stop)
                    continue
                self.term = term
                log.info("leader with epoch %d", term.epoch)
                self.metrics.is_leader.set({}, 1)
                self.metrics.leader_epoch.set({}, term.epoch)
                self.metrics.takeovers.inc({})
                await self._lead(term, stop)
                backoff.reset()
            except StaleEpochError as exc:
                log.warning("deposed: %s", exc)
            except CandidacyLost as exc:
                log.info("candidacy %s outlived its ZooKeeper session; standing again", exc)
            except Exception as exc:  # noqa: BLE001 - the loop outlives any dependency error
                log.warning("scheduler error (%r); re-joining the election", exc)
                await backoff.wait(stop)
            finally:
                self.metrics.is_leader.set({}, 0)
                if self.term is not None:
                    self.term.ended.set()
                    self.term = None
                await self.campaign.resign()
        log.info("scheduler stopped")

    async def _lead(self, term: LeaderTerm, stop: asyncio.Event) -> None:
        self.publisher = Publisher(
            self.broker, self.store, self.metrics,
            in_flight=self.settings.scheduler_publish_concurrency,
            mark_delay_s=min(self.settings.publish_mark_delay_s,
                             self.settings.republish_after_s / 4))
        publishing = asyncio.create_task(self.publisher.run())
        try:
            await self._lead_term(term, stop)
        finally:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            self.publisher = None

    async def _lead_term(self, term: LeaderTerm, stop: asyncio.Event) -> None:
        epoch = term.epoch
        # A previous leader may have died between commit and publish: re-publish at once.
        await self._republish(datetime.now(UTC))
        # Every path that ends a job's last run completes the job in the same transaction;
        # once per term, a sweep completes any a crash left behind (it scans the active
        # jobs, so it is not periodic: the cost of a periodic pass must follow the work).
        batch = self.settings.scheduler_batch_size
        while await self.store.complete_finished_jobs(epoch, batch) == batch:
            pass
        last_republish = datetime.now(UTC)
        reconnections = self.broker.reconnections
        last_reap = datetime.now(UTC) - REAP_INTERVAL
        # While PostgreSQL is unreachable, workers cannot renew their leases either: after
        # an outage (and after a take-over, which may follow one) they get one lease of
        # reachable database to record finished runs before expired leases are reaped.
        # Safety does not depend on it: a worker stops a run before its lease can lapse.
        reap_grace = timedelta(seconds=self.settings.worker_lease_s)
        reap_from = datetime.now(UTC) + reap_grace
        last_observed = datetime.now(UTC) - OBSERVE_INTERVAL
        while not stop.is_set() and not term.ended.is_set():
            self.wake.clear()
            now = datetime.now(UTC)
            tick_started = time.perf_counter()
            if now - last_observed >= OBSERVE_INTERVAL:
                last_observed = now
                self._observe_cluster()
            try:
                await self._fire_due(epoch, now)
                if self.workflows is not None:
                    # A run's first nodes are manual-style executions: published next.
                    await self._fire_due_workflows(self.workflows, epoch, now)
                await self._publish(
                    await self.store.manual_unpublished(self.settings.scheduler_batch_size))
                await self._requeue_retries(epoch, now)
                if now - last_reap >= REAP_INTERVAL and now >= reap_from:
                    await self._reap(epoch, now)
                    last_reap = now
                if self.broker.reconnections != reconnections:
                    # RabbitMQ is back: whatever could not be published goes out now.
                    reconnections = self.broker.reconnections
                    await self._republish(now)
                    last_republish = now
                elif now - last_republish >= timedelta(
                        seconds=self.settings.republish_after_s / 2):
                    await self._republish(now - timedelta(seconds=self.settings.republish_after_s))
                    last_republish = now
                wake_at = await self.store.next_wake(self.settings.scheduler_lookahead_s)
                if self.workflows is not None:
                    wake_at = _earliest(wake_at, await self.workflows.next_fire())
                self.metrics.tick_duration.observe({}, time.perf_counter() - tick_started)
            except StaleEpochError:
                raise
            except (TimeoutError, OSError) as exc:
                log.warning("leader tick failed (%r); retrying", exc)
                wake_at = None
                reap_from = datetime.now(UTC) + reap_grace
            timeout = self.settings.scheduler_poll_s
            if wake_at is not None:
                timeout = min(timeout, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            await _first_of(timeout, self.wake, term.ended, stop)

    async def _fire_due(self, epoch: int, now: datetime) -> None:
        batch = self.settings.scheduler_batch_size
        while True:
            horizon = now + timedelta(seconds=self.settings.scheduler_lookahead_s)
            dispatches, due, not_run = await self.store.fire_due_jobs(
                epoch, now, batch,
                functools.partial(plan_tick, now=now, horizon=horizon,
                                  misfire_threshold_s=self.settings.misfire_threshold_s),
                horizon
            )
            # Published while the leader goes on firing; a backlog past a few batches holds
            # the firing back (what is fired but not yet published waits in the outbox).
            # A job submitted meanwhile lets the next batch go at twice that: a high job
            # submitted during a low backlog's drain waited ~0.3-0.6 s here for 1,000 low
            # dispatches to be confirmed (`jobsched bench priority`, submitted -> queued).
            assert self.publisher is not None
            self.publisher.submit(dispatches)
            await self.publisher.wait_below(4 * batch, woken=self.wake, ceiling=8 * batch)
            self.fired += len(dispatches)
            if dispatches:
                self.metrics.fires.add({"state": ExecutionState.QUEUED}, len(dispatches))
            for record in not_run:
                self.not_run[record.state] = self.not_run.get(record.state, 0) + 1
                self.metrics.fires.inc({"state": record.state})
                self.metrics.misfires.inc({"state": record.state,
                                           "reason": _reason_class(record.reason)})
            if due < batch:
                return
            # A backlog drains over many batches, each on the clock of its own time: with
            # the tick's, jobs that fell due (or came within the lookahead) meanwhile, high
            # priority ones too, waited until the whole backlog was fired (a burst of high
            # jobs 5 s behind 20,000 low ones in `jobsched bench priority`).
            now = datetime.now(UTC)

    async def _fire_due_workflows(self, workflows: WorkflowLeaderRepository, epoch: int,
                                  now: datetime) -> None:
        """Scheduled runs of due workflows, with the jobs' misfire and concurrency rules
        (plan_tick); fired when due, not ahead."""
        batch = self.settings.scheduler_batch_size
        while True:
            started, due, not_run = await workflows.fire_due_workflows(
                epoch, now, batch,
                lambda due: plan_tick(due, now, None, self.settings.misfire_threshold_s))
            if started:
                self.metrics.workflow_runs_started.add({"trigger": "schedule"}, started)
            for record in not_run:
                self.metrics.workflow_runs.inc({"outcome": record.state})
            if due < batch:
                return

    async def _requeue_retries(self, epoch: int, now: datetime) -> None:
        batch = self.settings.scheduler_batch_size
        while dispatches := await self.store.requeue_retries(epoch, now, batch):
            self.metrics.retries_requeued.add({}, len(dispatches))
            await self._publish(dispatches)
            if len(dispatches) < batch:
                return

    async def _reap(self, epoch: int, now: datetime) -> None:
        """Executions whose worker stopped renewing the lease: retried, or dead (and then
        copied to the dead-letter queue, as a worker would have)."""
        reaped = await self.store.reap_expired(epoch, self.settings.scheduler_batch_size,
                                               self.settings.lost_attempts_limit)
        if not reaped:
            return
        self.reaped += len(reaped)
        for row in reaped:
            self.metrics.reaped.inc({"state": row.state})
        log.warning("reaped %d executions whose worker lost its lease", len(reaped))
        dead = [Dispatch(r.id, r.job_id, r.attempt).message()
                for r in reaped if r.state == ExecutionState.DEAD]
        await self.broker.publish_dead(dead)
        self.wake.set()  # the retrying ones are due now

    async def _republish(self, queued_before: datetime) -> None:
        """Publish the outbox (executions committed but never confirmed) queued before the
        given time, batch after batch while they are confirmed."""
        batch = self.settings.scheduler_batch_size
        while True:
            dispatches = await self.store.unpublished(queued_before, batch)
            self.metrics.unpublished.set({}, len(dispatches))
            if not dispatches:
                return
            log.info("re-publishing %d unconfirmed executions", len(dispatches))
            confirmed = await self._publish(dispatches)
            if len(dispatches) < batch or confirmed < len(dispatches):
                return

    async def _publish(self, dispatches: list[Dispatch]) -> int:
        """Publish (in priority order, behind nothing of a lower band) and wait for the
        confirms; returns how many were confirmed and marked."""
        assert self.publisher is not None
        return await self.publisher.submit(dispatches)

    def _observe_cluster(self) -> None:
        """Queue depths and live workers, as gauges (in the background: never delays a
        tick)."""
        if self._observing is not None and not self._observing.done():
            return
        self._observing = asyncio.create_task(self._observe_cluster_now())

    async def _observe_cluster_now(self) -> None:
        try:
            stats = await asyncio.wait_for(self.broker.queue_stats(), 2)
            for queue, counts in stats.items():
                self.metrics.queue_messages.set({"queue": queue}, counts.messages)
                self.metrics.queue_consumers.set({"queue": queue}, counts.consumers)
        except Exception as exc:  # noqa: BLE001 - a gauge left stale is fine
            log.debug("queue stats unavailable: %r", exc)
        try:
            workers = await asyncio.wait_for(self.coordinator.workers(), 2)
            self.metrics.live_workers.set({}, len(workers))
        except Exception as exc:  # noqa: BLE001
            log.debug("worker registry unavailable: %r", exc)
        if self.workflows is not None:
            await self._count_runs(self.workflows)

    async def _count_runs(self, workflows: WorkflowLeaderRepository) -> None:
        """Runs in flight, and runs ended since the last count by outcome (read from the
        database: a run ends in whichever process ends its last node)."""
        until = datetime.now(UTC) - RUN_COUNT_LAG
        since = self._runs_counted_until or until
        try:
            counts = await asyncio.wait_for(workflows.runs_finished(since, until), 2)
        except Exception as exc:  # noqa: BLE001 - counted on the next observation
            log.debug("workflow run counts unavailable: %r", exc)
            return
        self._runs_counted_until = until
        self.metrics.workflow_runs_in_flight.set({}, counts.in_flight)
        for outcome, runs in counts.by_state.items():
            self.metrics.workflow_runs.add({"outcome": outcome}, runs)


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None or second is None:
        return first or second
    return min(first, second)


def _reason_class(reason: str | None) -> str:
    """A bounded label value for a free-text reason."""
    text = reason or ""
    for key in ("concurrency=forbid", "max_catchup", "misfire=skip", "starting_deadline",
                "paused", "holds its lock", "unusable schedule"):
        if key in text:
            return key
    return "other"


async def _first_of(timeout: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _until_stopped(coro: Awaitable[LeaderTerm], stop: asyncio.Event) -> LeaderTerm | None:
    task = asyncio.ensure_future(coro)
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopping.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None

