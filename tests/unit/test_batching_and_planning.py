"""Pure logic of the hot path: the micro-batcher and the leader's fire planning."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from jobsched.batching import Batcher
from jobsched.domain.firing import DueJob, JobAdvance
from jobsched.domain.firing import plan_tick as plan_fires
from jobsched.domain.priority import Priority
from jobsched.domain.retry import RetryPolicy
from jobsched.domain.schedule import next_fire_after, parse_schedule
from jobsched.ports import ClaimedExecution
from jobsched.worker.results import AttemptResult
from jobsched.worker.worker import assign_claims, next_state


async def test_concurrent_submits_share_one_flush() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=100, max_delay=0.01)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    await batcher.close()
    assert results == [i * 10 for i in range(50)]
    assert len(flushes) == 1


async def test_batches_are_capped_and_failures_reach_every_waiter() -> None:
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if 13 in items:
            raise RuntimeError("database down")
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_size=10, max_delay=0.001)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(25)),
                                   return_exceptions=True)
    await batcher.close()
    assert max(sizes) == 10 and sum(sizes) == 25
    failed = [i for i, r in enumerate(results) if isinstance(r, RuntimeError)]
    assert failed == list(range(10, 20))


async def test_express_items_flush_beside_a_flush_in_flight_and_others_wait() -> None:
    release = asyncio.Event()
    flushes: list[list[str]] = []

    async def flush(items: list[str]) -> list[str]:
        flushes.append(items)
        if "low-1" in items:
            await release.wait()  # a slow flush, as a claim of 500 under load is
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_size=10, max_delay=0.001,
                                         express=Priority.HIGH)
    lows = asyncio.gather(*(batcher.submit(f"low-{i}", Priority.LOW) for i in range(3)))
    await asyncio.sleep(0.02)  # the low flush is in flight
    later_low = asyncio.ensure_future(batcher.submit("low-9", Priority.LOW))
    highs = await asyncio.wait_for(asyncio.gather(
        *(batcher.submit(f"high-{i}", Priority.HIGH) for i in range(2))), 1)
    assert highs == ["high-0", "high-1"]  # flushed while the low flush still hangs
    assert not later_low.done()  # a non-express item waits for the flush in flight
    release.set()
    assert await asyncio.wait_for(lows, 1) == ["low-0", "low-1", "low-2"]
    assert await asyncio.wait_for(later_low, 1) == "low-9"
    await batcher.close()
    assert flushes == [["low-0", "low-1", "low-2"], ["high-0", "high-1"], ["low-9"]]


async def test_express_items_that_come_during_an_express_flush_go_in_the_next_one() -> None:
    release_low, release_high = asyncio.Event(), asyncio.Event()
    flushes: list[list[str]] = []

    async def flush(items: list[str]) -> list[str]:
        flushes.append(items)
        if "low-0" in items:
            await release_low.wait()
        if "high-0" in items:
            await release_high.wait()  # the express flush in flight is slow too
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_size=10, max_delay=0.001,
                                         express=Priority.HIGH)
    low = asyncio.ensure_future(batcher.submit("low-0", Priority.LOW))
    await asyncio.sleep(0.02)  # the low flush is in flight
    first = asyncio.ensure_future(batcher.submit("high-0", Priority.HIGH))
    await asyncio.sleep(0.02)  # and the first express flush
    second = asyncio.ensure_future(batcher.submit("high-1", Priority.HIGH))
    await asyncio.sleep(0.02)
    assert not second.done()
    release_high.set()
    # high-1 goes in an express flush of its own, not after the low flush in flight
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == ["high-0", "high-1"]
    assert not low.done()
    release_low.set()
    assert await asyncio.wait_for(low, 1) == "low-0"
    await batcher.close()
    assert flushes == [["low-0"], ["high-0"], ["high-1"]]


async def test_express_items_waiting_with_others_flush_alone_beside_them() -> None:
    release = asyncio.Event()
    flushes: list[list[str]] = []

    async def flush(items: list[str]) -> list[str]:
        flushes.append(items)
        if "low-0" in items:
            await release.wait()  # the others' flush is slow; the express one is not
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_size=10, max_delay=0.01,
                                         express=Priority.HIGH)
    lows = asyncio.gather(*(batcher.submit(f"low-{i}", Priority.LOW) for i in range(3)))
    highs = asyncio.gather(*(batcher.submit(f"high-{i}", Priority.HIGH) for i in range(2)))
    # Both waited for the same flush (no flush in flight when they came).
    assert await asyncio.wait_for(highs, 1) == ["high-0", "high-1"]
    assert not lows.done()
    release.set()
    assert await asyncio.wait_for(lows, 1) == ["low-0", "low-1", "low-2"]
    await batcher.close()
    assert flushes == [["high-0", "high-1"], ["low-0", "low-1", "low-2"]]


async def test_without_an_express_band_one_flush_takes_every_band_by_weight() -> None:
    flushes: list[list[str]] = []

    async def flush(items: list[str]) -> list[str]:
        flushes.append(items)
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_size=10, max_delay=0.01)
    await asyncio.wait_for(asyncio.gather(
        *(batcher.submit(f"low-{i}", Priority.LOW) for i in range(2)),
        *(batcher.submit(f"high-{i}", Priority.HIGH) for i in range(2))), 1)
    await batcher.close()
    assert len(flushes) == 1 and sorted(flushes[0]) == ["high-0", "high-1", "low-0", "low-1"]


def test_plan_fires_coalesces_missed_fires() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    job = DueJob(uuid.uuid4(), "* * * * * *", "UTC", now - timedelta(seconds=30))
    once = DueJob(uuid.uuid4(), "immediate", "UTC", now)
    tick = plan_fires([job, once], now, misfire_threshold_s=0)
    assert [(f.job_id, f.scheduled_for, f.state) for f in tick.fires] == [
        (job.id, now - timedelta(seconds=30), "queued"), (once.id, now, "queued")]
    assert tick.advances == [
        JobAdvance(job.id, datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC), 1),
        JobAdvance(once.id, None, 1)]
    assert tick.replace == []


def test_plan_fires_applies_concurrency_policies() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    forbid = DueJob(uuid.uuid4(), "* * * * * *", "UTC", now, concurrency="forbid", busy=True)
    replace = DueJob(uuid.uuid4(), "* * * * * *", "UTC", now, concurrency="replace", busy=True)
    idle = DueJob(uuid.uuid4(), "* * * * * *", "UTC", now, concurrency="forbid", busy=False)
    tick = plan_fires([forbid, replace, idle], now)
    assert [(f.job_id, f.state) for f in tick.fires] == [
        (forbid.id, "skipped"), (replace.id, "queued"), (idle.id, "queued")]
    assert tick.fires[0].reason == "previous run still active (concurrency=forbid)"
    assert tick.replace == [replace.id]
    assert [a.runs for a in tick.advances] == [0, 1, 1]


def test_plan_fires_seeds_hashed_values_with_the_job_id() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    jobs = [DueJob(uuid.UUID(int=i), "H/20 * * * *", "UTC", now) for i in range(40)]
    tick = plan_fires(jobs, now)
    assert [f.state for f in tick.fires] == ["queued"] * 40
    for job, advance in zip(jobs, tick.advances, strict=True):
        own = parse_schedule("H/20 * * * *", "UTC", job.id.bytes)
        assert advance.next_fire_at == next_fire_after(own, now)
    assert len({a.next_fire_at for a in tick.advances}) > 10  # spread, not all at :20


def test_plan_fires_stops_a_job_whose_schedule_cannot_be_read() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    broken = DueJob(uuid.uuid4(), "not a schedule", "UTC", now)
    tick = plan_fires([broken], now)
    assert [(f.state, f.reason is not None) for f in tick.fires] == [("missed", True)]
    assert tick.advances == [JobAdvance(broken.id, None, 0)]


@pytest.mark.parametrize(("outcome", "attempt", "state"), [
    ("succeeded", 1, "succeeded"),
    ("failed", 1, "retrying"),
    ("timed_out", 2, "retrying"),
    ("failed", 3, "dead"),
])
def test_next_state_follows_the_retry_policy(outcome: str, attempt: int, state: str) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=2, max_backoff_s=10)
    got, delay = next_state(AttemptResult(outcome), attempt, policy)
    assert got == state
    assert (delay > 0) == (state == "retrying")


def test_two_copies_of_a_message_in_one_claim_batch_get_one_row() -> None:
    """A duplicate delivery in the same batch as the original: the one claimed row goes to
    the first copy only, so the execution runs once (chaos scenario 7 caught this)."""
    a, b = uuid.uuid4(), uuid.uuid4()
    row_a = ClaimedExecution(a, uuid.uuid4(), "default", 1, datetime.now(UTC), "python", {},
                             1.0, 1, 1.0, 1.0, "allow", None)
    due = datetime.now(UTC)
    claims = [(a, 1, due), (b, 1, due), (a, 1, due), (a, 2, None)]
    assert assign_claims(claims, [row_a]) == [row_a, None, None, None]
    assert assign_claims([(b, 1, None)], []) == [None]
