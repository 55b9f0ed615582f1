"""Run timeouts with shared timers (jobsched.worker.deadlines): as asyncio.timeout, up to
one grain late, with one timer per grain of deadlines."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from jobsched.worker.deadlines import Alarms, Deadlines


async def test_a_run_past_its_timeout_gets_timeout_error_within_a_grain() -> None:
    deadlines = Deadlines(grain_s=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadlines.timeout(0.1) as timeout:
            await asyncio.sleep(5)
    took = time.monotonic() - started
    assert timeout.expired()
    assert 0.1 <= took < 0.1 + 0.05 + 0.1  # the grain, and some slack for a busy machine
    assert deadlines._grains == {} and deadlines._timers == {}


async def test_a_run_that_ends_in_time_leaves_no_timer() -> None:
    deadlines = Deadlines()
    async with deadlines.timeout(10) as timeout:
        await asyncio.sleep(0)
    assert not timeout.expired()
    assert deadlines._grains == {} and deadlines._timers == {}


async def test_runs_ending_in_the_same_grain_share_one_timer() -> None:
    deadlines = Deadlines(grain_s=0.05)
    gate = asyncio.Event()
    all_in = asyncio.Event()
    inside = 0

    async def run() -> None:
        nonlocal inside
        async with deadlines.timeout(30):
            inside += 1
            if inside == 200:
                all_in.set()
            await gate.wait()

    tasks = [asyncio.create_task(run()) for _ in range(200)]
    await all_in.wait()
    assert len(deadlines._timers) <= 2  # the 200 joins may straddle a grain's edge
    assert sum(len(runs) for runs in deadlines._grains.values()) == 200
    gate.set()
    await asyncio.gather(*tasks)
    assert deadlines._grains == {} and deadlines._timers == {}


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines()

    async def run() -> None:
        async with deadlines.timeout(30):
            await asyncio.sleep(5)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines._grains == {} and deadlines._timers == {}


async def test_a_timeout_inside_a_cancelled_task_is_not_taken_for_its_own() -> None:
    # The outer cancel comes in after the deadline expired: as asyncio.timeout, the task
    # sees a cancel, not a TimeoutError.
    deadlines = Deadlines(grain_s=0.01)

    async def run() -> None:
        async with deadlines.timeout(0.01):
            try:
                await asyncio.sleep(5)
            finally:
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                await asyncio.sleep(0)

    task = asyncio.create_task(run())
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_new_event_loop_starts_afresh() -> None:
    deadlines = Deadlines(grain_s=0.05)

    async def expire() -> bool:
        try:
            async with deadlines.timeout(0.05):
                await asyncio.sleep(1)
        except TimeoutError:
            return True
        return False

    assert asyncio.run(expire())
    assert asyncio.run(expire())  # the first loop's timers are gone; new ones are armed


# -- waits until due (Alarms) ----------------------------------------------------------------


async def test_waits_due_at_one_instant_wake_together_in_order_never_early() -> None:
    alarms = Alarms()
    due = datetime.now(UTC) + timedelta(milliseconds=150)
    woke: list[tuple[int, float]] = []

    async def wait(n: int) -> None:
        await alarms.until(due)
        woke.append((n, time.time()))

    waits = [asyncio.create_task(wait(n)) for n in range(200)]
    await asyncio.sleep(0.01)
    assert len(alarms._waiting) == 1  # one timer for the 200 of them
    await asyncio.gather(*waits)
    assert [n for n, _ in woke] == list(range(200))  # in the order they went to sleep
    assert min(at for _, at in woke) >= due.timestamp()  # none before it was due
    assert alarms._waiting == {}


async def test_a_wait_already_due_returns_at_once_and_others_keep_their_own_timer() -> None:
    alarms = Alarms()
    now = datetime.now(UTC)
    await alarms.until(now - timedelta(seconds=1))  # past: no timer, no wait
    assert alarms._waiting == {}
    first, second = now + timedelta(milliseconds=40), now + timedelta(milliseconds=80)
    order: list[str] = []

    async def wait(name: str, when: datetime) -> None:
        await alarms.until(when)
        order.append(name)

    await asyncio.gather(wait("second", second), wait("first", first))
    assert order == ["first", "second"]


async def test_a_cancelled_wait_leaves_the_others_of_its_instant_waiting() -> None:
    alarms = Alarms()
    due = datetime.now(UTC) + timedelta(milliseconds=100)
    cancelled = asyncio.create_task(alarms.until(due))
    kept = asyncio.create_task(alarms.until(due))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(kept, 1)
    assert time.time() >= due.timestamp()


def test_waits_registered_in_one_long_loop_turn_wake_on_time_under_uvloop() -> None:
    """uvloop times its wait for the next timer from the clock as last read: a timer set at
    the start of a long turn (1,000 runs going to sleep together, 100 µs each here) fired
    as late as the rest of that turn took (~100 ms) before each wait read the clock."""
    uvloop = pytest.importorskip("uvloop")

    async def late_ms() -> float:
        alarms = Alarms()
        loop = asyncio.get_running_loop()
        due = datetime.now(UTC) + timedelta(milliseconds=300)
        gate: asyncio.Future[None] = loop.create_future()
        woke: list[float] = []

        async def claimed_then_sleeps() -> None:
            await gate
            busy = time.perf_counter()
            while time.perf_counter() - busy < 100e-6:  # a claim's continuation
                pass
            await alarms.until(due)
            woke.append(time.time())

        sleepers = [asyncio.ensure_future(claimed_then_sleeps()) for _ in range(1000)]
        await asyncio.sleep(0.01)
        gate.set_result(None)  # all of them go on in one loop turn
        await asyncio.gather(*sleepers)
        return (woke[0] - due.timestamp()) * 1000

    late = uvloop.run(late_ms())
    assert 0 <= late < 30, late  # before: the turn's 100 ms and more
