"""The leader's publisher on in-memory ports: a burst of high fires is published ahead of a
backlog of low ones, low still gets its share, and what is confirmed is marked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime

from jobsched.domain.priority import Priority
from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.ports import Dispatch
from jobsched.scheduler.publisher import Publisher
from tests.unit.fakes import FakeBroker, FakeLeaderStore


class SlowBroker(FakeBroker):
    """Confirms each chunk after a pause, as a busy broker does."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[list[Priority]] = []

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        self.chunks.append([m.priority for m in messages])
        await asyncio.sleep(0.01)
        return await super().publish_many(messages)


def _dispatches(count: int, band: Priority) -> list[Dispatch]:
    return [Dispatch(uuid.uuid4(), uuid.uuid4(), 1, priority=band) for _ in range(count)]


async def test_high_fires_overtake_a_low_backlog_and_low_keeps_a_share() -> None:
    broker, store = SlowBroker(), FakeLeaderStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=50, in_flight=2)
    running = asyncio.create_task(publisher.run())
    try:
        lows = publisher.submit(_dispatches(2000, Priority.LOW))
        await asyncio.sleep(0.05)  # a few low chunks are out; most of the backlog waits
        highs = _dispatches(300, Priority.HIGH)
        high_done = publisher.submit(highs)
        assert await asyncio.wait_for(high_done, 5) == 300
        published = [m.priority for m in broker.published]
        last_high = max(i for i, p in enumerate(published) if p == Priority.HIGH)
        first_high = published.index(Priority.HIGH)
        assert last_high < 1000  # the highs went out long before the low backlog
        assert Priority.LOW in published[first_high:last_high]  # low was not stopped
        # The shared lane serves both bands while both wait: low keeps 1 in 13 of it.
        mixed = [chunk for chunk in broker.chunks if len(set(chunk)) == 2]
        assert mixed
        lows_in_mixed = sum(chunk.count(Priority.LOW) for chunk in mixed)
        assert lows_in_mixed / sum(len(chunk) for chunk in mixed) >= 1 / 13 - 0.01
        assert await asyncio.wait_for(lows, 10) == 2000
        assert set(store.published) == {m.execution_id for m in broker.published}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_what_is_unconfirmed_or_left_at_the_end_of_a_term_stays_in_the_outbox() -> None:
    broker, store = FakeBroker(), FakeLeaderStore()
    broker.confirm = False
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=10, in_flight=1)
    running = asyncio.create_task(publisher.run())
    done = publisher.submit(_dispatches(25, Priority.NORMAL))
    assert await asyncio.wait_for(done, 5) == 0  # nothing confirmed: all stay in the outbox
    assert store.published == []
    waiting = publisher.submit(_dispatches(500, Priority.LOW))
    running.cancel()  # the term ends with a backlog: settled, nothing marked
    await asyncio.gather(running, return_exceptions=True)
    assert await asyncio.wait_for(waiting, 5) == 0 and publisher.backlog == 0


class StuckLowBroker(FakeBroker):
    """A broker whose confirms of low chunks are held until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release_lows = asyncio.Event()

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        if any(m.priority == Priority.LOW for m in messages):
            await self.release_lows.wait()
        return await super().publish_many(messages)


async def test_high_fires_have_a_lane_of_their_own_when_low_chunks_hold_every_slot() -> None:
    broker, store = StuckLowBroker(), FakeLeaderStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=50, in_flight=2)
    running = asyncio.create_task(publisher.run())
    try:
        lows = publisher.submit(_dispatches(500, Priority.LOW))
        await asyncio.sleep(0.02)  # both shared slots hold a low chunk awaiting its confirm
        assert broker.published == []
        highs = publisher.submit(_dispatches(120, Priority.HIGH))
        assert await asyncio.wait_for(highs, 5) == 120  # the lows are still unconfirmed
        assert {m.priority for m in broker.published} == {Priority.HIGH}
        broker.release_lows.set()
        assert await asyncio.wait_for(lows, 5) == 500
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


class HeldBroker(FakeBroker):
    """A broker that confirms nothing until released: what it was handed went out without
    waiting for a confirm."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[AttemptMessage] = []
        self.release = asyncio.Event()

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        self.handed.extend(messages)
        await self.release.wait()
        return await super().publish_many(messages)


async def test_a_high_burst_of_several_chunks_goes_out_beside_a_stuck_low_backlog() -> None:
    """Low chunks hold every shared slot awaiting their confirms (a saturating backlog); a
    burst of high fires three chunks long is handed over whole, not a confirm apart."""
    broker, store = HeldBroker(), FakeLeaderStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=100, in_flight=4)
    running = asyncio.create_task(publisher.run())
    try:
        lows = publisher.submit(_dispatches(1000, Priority.LOW))
        await asyncio.sleep(0.02)
        assert len(broker.handed) == 400  # four low chunks, each awaiting its confirm
        highs = publisher.submit(_dispatches(250, Priority.HIGH))
        for _ in range(100):
            if len(broker.handed) == 650:
                break
            await asyncio.sleep(0.01)
        handed_highs = [m for m in broker.handed if m.priority == Priority.HIGH]
        assert len(handed_highs) == 250 and broker.published == []
        broker.release.set()
        assert await asyncio.wait_for(highs, 5) == 250
        assert await asyncio.wait_for(lows, 5) == 1000
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_fire_loop_waits_for_the_backlog_unless_woken_and_never_past_the_ceiling(
        ) -> None:
    broker, store = StuckLowBroker(), FakeLeaderStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=50, in_flight=2)
    running = asyncio.create_task(publisher.run())
    woken = asyncio.Event()
    try:
        lows = publisher.submit(_dispatches(500, Priority.LOW))
        await asyncio.sleep(0.02)  # two chunks out, unconfirmed: 400 wait
        assert publisher.backlog == 400
        plain = asyncio.ensure_future(publisher.wait_below(100))
        woken.set()  # a job was submitted
        over = asyncio.ensure_future(publisher.wait_below(100, woken=woken, ceiling=300))
        # woken and under its ceiling: back at once, though over the limit
        await asyncio.wait_for(publisher.wait_below(100, woken=woken, ceiling=450), 1)
        await asyncio.sleep(0.05)
        assert not over.done()  # 400 is past this one's ceiling: held
        assert not plain.done()  # not told of a submit: held until the limit
        assert publisher.backlog == 400
        broker.release_lows.set()
        await asyncio.wait_for(asyncio.gather(plain, over), 5)
        assert publisher.backlog <= 100
        assert await asyncio.wait_for(lows, 5) == 500
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


class RecordingStore(FakeLeaderStore):
    """Records each mark_published call: when, which attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, list[uuid.UUID], list[int | None]]] = []

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        self.marks.append((asyncio.get_running_loop().time(), list(execution_ids),
                           list(attempts or [])))
        await super().mark_published(execution_ids, scheduled_for, attempts)


async def test_confirmed_dispatches_are_marked_after_the_delay_in_batches_with_attempts(
) -> None:
    broker, store = FakeBroker(), RecordingStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), chunk=100, in_flight=4,
                          mark_delay_s=0.3)
    running = asyncio.create_task(publisher.run())
    loop = asyncio.get_running_loop()
    try:
        dispatches = [Dispatch(uuid.uuid4(), uuid.uuid4(), 1 + i % 3, fresh=True)
                      for i in range(2500)]
        submitted = loop.time()
        assert await asyncio.wait_for(publisher.submit(dispatches), 5) == 2500
        assert store.marks == []  # confirmed (the caller is answered), not marked yet
        # sent again (the sweep, a run asked for by hand): marked at once, or the next
        # tick would read it from the outbox and send it again
        again = _dispatches(30, Priority.NORMAL)
        assert await asyncio.wait_for(publisher.submit(again), 5) == 30
        assert store.published == [d.execution_id for d in again]
        assert loop.time() < submitted + 0.3
        await _until_marked(store, 2530)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    late = store.marks[1:]
    assert min(at for at, _, _ in late) >= submitted + 0.3
    assert len(late) < 25 and max(len(ids) for _, ids, _ in late) <= 1000
    marked = {i: a for _, ids, attempts in late for i, a in zip(ids, attempts, strict=True)}
    assert marked == {d.execution_id: d.attempt for d in dispatches}


async def test_marks_still_waiting_when_the_term_ends_are_left_to_the_sweep() -> None:
    broker, store = FakeBroker(), RecordingStore()
    publisher = Publisher(broker, store, Metrics("scheduler", "t"), mark_delay_s=5)
    running = asyncio.create_task(publisher.run())
    fires = [Dispatch(uuid.uuid4(), uuid.uuid4(), 1, fresh=True) for _ in range(50)]
    assert await asyncio.wait_for(publisher.submit(fires), 5) == 50
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert store.marks == [] and store.published == []


async def _until_marked(store: RecordingStore, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while len(store.published) < count:
        assert asyncio.get_running_loop().time() < deadline, "never marked"
        await asyncio.sleep(0.01)
