"""The leader's outbox publisher: fired executions go to RabbitMQ in small chunks, a few
chunks' confirms in flight at once, each chunk filled by priority band (the weighted round
robin of jobsched.domain.priority). A burst of high fires therefore goes out ahead of a
backlog of low ones still waiting to be published, instead of behind every message already
handed to the channel. High dispatches also have a lane of their own, as many chunks in
flight as the shared ones and beside them: a high fire never waits for a slot held by low
chunks, nor a burst's second chunk for its first's confirms (each 0.2-0.8 s under a
saturating backlog: with one high chunk in flight, the 200 high fires of `jobsched bench
priority` reached RabbitMQ in two steps a confirm apart). What is confirmed is
marked published; what is not stays in the outbox (published_at IS NULL) for the
re-publish sweep, including whatever is still queued here when the leadership term ends.

A new fire's mark is made ``mark_delay_s`` after the confirms, by a task of its own, in
batches of up to MARK_BATCH (anything sent again is marked at once): a worker's claim
marks what it claims (published_at is set with the claim), and the mark skips rows no
longer queued, so an execution claimed within the delay costs no write of its own for
the mark. Marked at once, every execution's row was written once more, a new version with
its index entries (the mark was 1.1 s of PostgreSQL's 5.1 s of statement time in a
20,000-job burn-down, pg_stat_statements).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jobsched.domain.priority import Priority, WeightedRoundRobin
from jobsched.metrics import Metrics
from jobsched.ports import Broker, Dispatch, LeaderRepository

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """One caller's dispatches: resolves with how many were confirmed once all are done."""

    size: int
    done: int = 0
    confirmed: int = 0
    future: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, confirmed: int, count: int) -> None:
        self.done += count
        self.confirmed += confirmed
        if self.done >= self.size and not self.future.done():
            self.future.set_result(self.confirmed)


#: The most executions one delayed mark statement carries.
MARK_BATCH = 1000


class Publisher:
    def __init__(self, broker: Broker, store: LeaderRepository, metrics: Metrics, *,
                 chunk: int = 100, in_flight: int = 4, mark_delay_s: float = 0.0) -> None:
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.chunk = chunk
        self._pending: dict[Priority, collections.deque[tuple[Dispatch, _Batch]]] = {
            band: collections.deque() for band in Priority}
        self._picks = WeightedRoundRobin()
        self._slots = asyncio.Semaphore(in_flight)
        self._wake = asyncio.Event()
        self._high_slots = asyncio.Semaphore(in_flight)
        self._high_wake = asyncio.Event()
        self._taken = asyncio.Event()  # set each time a chunk leaves the queue
        self._sending: set[asyncio.Task[None]] = set()
        self.mark_delay_s = mark_delay_s
        # Confirmed dispatches waiting for their mark: (when it is due, loop time; them).
        self._unmarked: collections.deque[tuple[float, list[Dispatch]]] = collections.deque()
        self._unmarked_wake = asyncio.Event()

    @property
    def backlog(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def submit(self, dispatches: Sequence[Dispatch]) -> asyncio.Future[int]:
        """Queue dispatches to publish; the future gives how many were confirmed."""
        batch = _Batch(len(dispatches))
        if not dispatches:
            batch.future.set_result(0)
            return batch.future
        for dispatch in dispatches:
            self._pending[dispatch.priority].append((dispatch, batch))
        self._wake.set()
        if self._pending[Priority.HIGH]:
            self._high_wake.set()
        return batch.future

    async def wait_below(self, limit: int, *, woken: asyncio.Event | None = None,
                         ceiling: int = 0) -> None:
        """Back-pressure for the fire loop: until at most ``limit`` dispatches wait, or,
        once ``woken`` is set (a job was submitted: maybe a high one, due now), at most
        ``ceiling``: the loop's next batch, highest band first, need not wait for a low
        backlog to drain, and what waits stays bounded all the same."""
        while self.backlog > limit:
            if woken is not None and woken.is_set() and self.backlog <= ceiling:
                return
            self._taken.clear()
            await self._taken.wait()

    def _take(self) -> list[tuple[Dispatch, _Batch]]:
        taken: list[tuple[Dispatch, _Batch]] = []
        while len(taken) < self.chunk:
            waiting = [band for band, queue in self._pending.items() if queue]
            if not waiting:
                break
            band = waiting[0] if len(waiting) == 1 else self._picks.pick(waiting)
            taken.append(self._pending[band].popleft())
        return taken

    def _take_high(self) -> list[tuple[Dispatch, _Batch]]:
        queue = self._pending[Priority.HIGH]
        return [queue.popleft() for _ in range(min(self.chunk, len(queue)))]

    async def run(self) -> None:
        """Publish until cancelled (the end of the term); what is left stays unpublished
        in the database and the sweep re-publishes it."""
        try:
            await asyncio.gather(self._lane(self._wake, self._slots, self._take),
                                 self._lane(self._high_wake, self._high_slots, self._take_high),
                                 self._marker())
        finally:
            for task in self._sending:
                task.cancel()
            for queue in self._pending.values():
                for _, batch in queue:
                    batch.settle(0, 1)
                queue.clear()

    async def _lane(self, wake: asyncio.Event, slots: asyncio.Semaphore,
                    take: Callable[[], list[tuple[Dispatch, _Batch]]]) -> None:
        while True:
            await wake.wait()
            await slots.acquire()
            taken = take()
            if not taken:
                slots.release()
                wake.clear()
                continue
            self._taken.set()
            task = asyncio.create_task(self._send(taken, slots))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, taken: list[tuple[Dispatch, _Batch]],
                    slots: asyncio.Semaphore) -> None:
        dispatches = [d for d, _ in taken]
        confirmed = [False] * len(taken)
        try:
            confirmed = await self.broker.publish_many([d.message() for d in dispatches])
            sent = [d for d, ok in zip(dispatches, confirmed, strict=True) if ok]
            if self.mark_delay_s > 0:
                # Only new fires wait for their mark. What is sent again (the sweep, a run
                # asked for by hand, a workflow's first nodes, a retry) is read from the
                # outbox again by the next tick or sweep batch: unmarked, it would go out
                # again each time.
                later = [d for d in sent if d.fresh]
                if later:
                    due = asyncio.get_running_loop().time() + self.mark_delay_s
                    self._unmarked.append((due, later))
                    self._unmarked_wake.set()
                sent = [d for d in sent if not d.fresh]
            await self._mark(sent)
        except Exception as exc:  # noqa: BLE001 - the outbox sweep re-publishes
            log.warning("publishing %d executions failed: %r", len(taken), exc)
        finally:
            slots.release()
            self._record(dispatches, confirmed)
            for (_, batch), ok in zip(taken, confirmed, strict=True):
                batch.settle(int(ok), 1)

    async def _marker(self) -> None:
        """Marks confirmed dispatches once their delay is over, oldest first."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._unmarked:
                self._unmarked_wake.clear()
                await self._unmarked_wake.wait()
                continue
            wait = self._unmarked[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            batch: list[Dispatch] = []
            now = loop.time()
            while (self._unmarked and self._unmarked[0][0] <= now
                   and len(batch) + len(self._unmarked[0][1]) <= MARK_BATCH):
                batch += self._unmarked.popleft()[1]
            if not batch:  # one confirm's dispatches alone fill more than a batch
                batch = self._unmarked.popleft()[1]
            try:
                await self._mark(batch)
            except Exception as exc:  # noqa: BLE001 - the outbox sweep re-publishes
                log.warning("marking %d executions published failed: %r", len(batch), exc)

    async def _mark(self, sent: list[Dispatch]) -> None:
        if sent:
            await self.store.mark_published([d.execution_id for d in sent],
                                            scheduled_for=[d.scheduled_for for d in sent],
                                            attempts=[d.attempt for d in sent])

    def _record(self, dispatches: list[Dispatch], confirmed: list[bool]) -> None:
        now = datetime.now(UTC)
        for dispatch, ok in zip(dispatches, confirmed, strict=True):
            if ok and dispatch.fresh and dispatch.scheduled_for is not None:
                lateness = (now - dispatch.scheduled_for).total_seconds()
                self.metrics.fire_lateness.observe({}, max(0.0, lateness))
