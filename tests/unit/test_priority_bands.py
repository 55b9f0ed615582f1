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
    for _ in range(36):
        slots.release()
        await asyncio.sleep(0)
    counts = Counter(served)
    assert counts[Priority.HIGH] == 30 and counts[Priority.LOW] == 6  # high first, low still
    assert slots.waiting(Priority.LOW) == 24
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
