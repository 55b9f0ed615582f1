"""Priority bands: the weighted choice of the next band to serve."""

from __future__ import annotations

from collections import Counter

import pytest

from jobsched.domain.priority import DEFAULT_WEIGHTS, Priority, WeightedRoundRobin


def test_ranks_round_trip_and_order() -> None:
    assert [p.rank for p in (Priority.HIGH, Priority.NORMAL, Priority.LOW)] == [0, 1, 2]
    assert all(Priority.from_rank(p.rank) is p for p in Priority)
    assert Priority.from_rank(99) is Priority.NORMAL


def test_with_every_band_waiting_each_gets_its_weight_and_low_never_starves() -> None:
    picks = WeightedRoundRobin()
    counts = Counter(picks.pick(Priority) for _ in range(1800))
    total = sum(DEFAULT_WEIGHTS.values())
    for band, weight in DEFAULT_WEIGHTS.items():
        assert counts[band] == 1800 * weight // total
    assert counts[Priority.LOW] / 1800 >= 0.05


def test_picks_interleave_instead_of_bursting() -> None:
    picks = WeightedRoundRobin()
    sequence = [picks.pick(Priority) for _ in range(18)]
    # the longest run of one band is short: low and normal are served within each round
    longest = max(len(run) for run in "".join(b.value[0] for b in sequence).split("n"))
    assert longest <= 4
    assert Priority.LOW in sequence


def test_an_idle_band_lends_its_share() -> None:
    picks = WeightedRoundRobin()
    assert {picks.pick([Priority.LOW]) for _ in range(10)} == {Priority.LOW}
    counts = Counter(picks.pick([Priority.NORMAL, Priority.LOW]) for _ in range(600))
    assert counts[Priority.NORMAL] == 500 and counts[Priority.LOW] == 100


def test_nothing_waiting_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        WeightedRoundRobin().pick([])
    with pytest.raises(ValueError):
        WeightedRoundRobin({Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 1})


async def test_band_slots_hand_freed_slots_by_weight_and_survive_cancellation() -> None:
    import asyncio

    from jobsched.worker.slots import BandSlots

    slots = BandSlots(2)
    await slots.acquire(Priority.LOW)
    await slots.acquire(Priority.LOW)
    served: list[Priority] = []

    async def wait(band: Priority) -> None:
        await slots.acquire(band)
        served.append(band)

    waiters = [asyncio.create_task(wait(b)) for b in [Priority.LOW] * 30 + [Priority.HIGH] * 30]
    cancelled = asyncio.create_task(wait(Priority.HIGH))
    await asyncio.sleep(0)
    cancelled.cancel()
    for _ in range(36):  # without kept slots, the band a slot is given back by is moot
        slots.release(Priority.LOW)
        await asyncio.sleep(0)
    counts = Counter(served)
    assert counts[Priority.HIGH] == 30 and counts[Priority.LOW] == 6  # high first, low still
    assert slots.waiting(Priority.LOW) == 24
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_reserved_slots_let_a_high_run_start_while_low_work_fills_the_rest() -> None:
    import asyncio

    from jobsched.worker.slots import BandSlots

    slots = BandSlots(8, reserved=2)
    for _ in range(6):
        await slots.acquire(Priority.LOW)
    low = asyncio.create_task(slots.acquire(Priority.LOW))
    normal = asyncio.create_task(slots.acquire(Priority.NORMAL))
    await asyncio.sleep(0)
    assert not low.done() and not normal.done() and slots.free == 2  # kept for high
    # high takes the kept slots at once, with low and normal waiting
    await asyncio.wait_for(slots.acquire(Priority.HIGH), 1)
    await asyncio.wait_for(slots.acquire(Priority.HIGH), 1)
    assert slots.free == 0
    third_high = asyncio.create_task(slots.acquire(Priority.HIGH))
    await asyncio.sleep(0)
    # a high slot freed goes to the high waiter, never to low or normal (still 6 of theirs)
    slots.release(Priority.HIGH)
    await asyncio.sleep(0)
    assert third_high.done() and not low.done() and not normal.done()
    slots.release(Priority.HIGH)
    await asyncio.sleep(0)
    assert slots.free == 1 and not low.done() and not normal.done()
    # a low slot freed goes to a low or normal waiter (the weights pick normal first)
    slots.release(Priority.LOW)
    await asyncio.sleep(0)
    assert normal.done() and not low.done()
    slots.release(Priority.LOW)
    await asyncio.sleep(0)
    assert low.done() and slots.free == 1


async def test_reserved_slots_never_starve_low_and_cancelled_waiters_pass_theirs_on() -> None:
    import asyncio

    from jobsched.worker.slots import BandSlots

    slots = BandSlots(4, reserved=1)
    held: list[Priority] = []

    async def run(band: Priority) -> None:
        await slots.acquire(band)
        held.append(band)

    tasks = [asyncio.create_task(run(b))
             for b in [Priority.LOW] * 40 + [Priority.HIGH] * 40]
    await asyncio.sleep(0)
    assert held == [Priority.LOW] * 3 + [Priority.HIGH]  # low fills all but the kept one
    gone = asyncio.create_task(slots.acquire(Priority.LOW))
    await asyncio.sleep(0)
    gone.cancel()
    served = 0
    while served < 60:
        slots.release(held[served])
        served += 1
        await asyncio.sleep(0)
    counts = Counter(held[4:])
    assert counts[Priority.LOW] >= 3  # low kept a share while high work waited
    assert counts[Priority.HIGH] > counts[Priority.LOW]
    # every slot is free or held, and low never took the kept one
    assert slots.free + len(held) - served == 4 and slots._others <= 3
    assert slots.waiting(Priority.LOW) == 40 - counts[Priority.LOW] - 3
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_reserve_leaves_low_and_normal_a_slot() -> None:
    from jobsched.settings import Settings
    from jobsched.worker.slots import BandSlots

    assert Settings().kept_for_high(1024) == 128 and Settings().kept_for_high(64) == 8
    assert Settings(worker_high_reserve=0.9).kept_for_high(1) == 0
    assert Settings(worker_high_reserve=0.99).kept_for_high(10) == 9
    with pytest.raises(ValueError):
        BandSlots(4, reserved=4)


def test_by_default_1000_normal_runs_due_at_one_instant_all_get_a_slot() -> None:
    """The reserve for high runs is on top of the 1,000 normal or low runs a worker starts
    at once by default: with 1,024 slots they had 896, and the other 104 of 1,000 runs due
    together were claimed only once the first ones had ended (one worker's lateness p99
    80 ms; 41 ms with 1,280)."""
    from jobsched.settings import Settings

    settings = Settings()
    slots = settings.worker_concurrency
    assert slots - settings.kept_for_high(slots) >= 1000
