"""The worker's Gate (jobsched.worker.slots): a counting semaphore, first come first served,
that a waiter who gives up (cancelled) leaves without taking or losing a place."""

from __future__ import annotations

import asyncio

import pytest

from jobsched.worker.slots import Gate


async def test_places_are_taken_then_handed_on_in_arrival_order() -> None:
    gate = Gate(2)
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire()
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert order == [] and gate.free == 0
    for _ in range(4):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3]
    gate.release()
    gate.release()
    assert gate.free == 2


async def test_a_cancelled_waiter_neither_takes_nor_loses_a_place() -> None:
    gate = Gate(1)
    await gate.acquire()
    gave_up = asyncio.create_task(gate.acquire())
    after = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gave_up.cancel()
    await asyncio.sleep(0)
    gate.release()  # goes past the cancelled waiter to the next
    await asyncio.wait_for(after, 1)
    gate.release()
    assert gate.free == 1
    await asyncio.wait_for(gate.acquire(), 1)  # a cancelled one at the head holds nothing up


async def test_a_waiter_cancelled_just_as_it_was_granted_passes_the_place_on() -> None:
    gate = Gate(1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # granted to first...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert gate.free == 0


def test_a_gate_needs_a_place() -> None:
    with pytest.raises(ValueError):
        Gate(0)
