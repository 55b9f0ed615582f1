"""The worker's run slots, shared by the priority bands: a free slot goes at once to whoever
asks; when all are taken, each slot freed goes to a waiter of the band the weighted round
robin picks (jobsched.domain.priority), first come first served within a band.

A few slots (``reserved``) are high's alone: normal and low runs together never hold more
than ``capacity - reserved``, so a high run that comes while a backlog of low work fills
every other slot starts at once instead of waiting for low runs to end."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from jobsched.domain.priority import DEFAULT_WEIGHTS, Priority, WeightedRoundRobin


class BandSlots:
    def __init__(self, capacity: int, weights: dict[Priority, int] | None = None,
                 reserved: int = 0) -> None:
        if capacity < 1 or not 0 <= reserved < capacity:
            raise ValueError(f"need 0 <= reserved < capacity, got {reserved} of {capacity}")
        self.capacity = capacity
        self.reserved = reserved
        self.free = capacity
        self._others = 0  # slots held by normal and low runs
        self._picks = WeightedRoundRobin(weights or DEFAULT_WEIGHTS)
        self._waiting: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            band: collections.deque() for band in Priority}

    def waiting(self, band: Priority) -> int:
        return sum(1 for f in self._waiting[band] if not f.done())

    def _may_take(self, band: Priority) -> bool:
        return self.free > 0 and (
            band is Priority.HIGH or self._others < self.capacity - self.reserved)

    def _take(self, band: Priority) -> None:
        self.free -= 1
        if band is not Priority.HIGH:
            self._others += 1

    def _queued(self, band: Priority) -> bool:
        """Whether a live waiter of ``band`` is queued (cancelled ones at the head go)."""
        queue = self._waiting[band]
        while queue and queue[0].done():
            queue.popleft()
        return bool(queue)

    async def acquire(self, band: Priority) -> None:
        if not self._queued(band) and self._may_take(band):
            self._take(band)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[band].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(band)  # granted just as it was cancelled: pass the slot on
            raise

    def release(self, band: Priority) -> None:
        """Give back a slot ``band`` held: it goes to a waiter that may take it, by weight."""
        self.free += 1
        if band is not Priority.HIGH:
            self._others -= 1
        while True:
            bands = [b for b in Priority if self._queued(b) and self._may_take(b)]
            if not bands:
                return
            picked = self._picks.pick(bands)
            self._take(picked)
            self._waiting[picked].popleft().set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, band: Priority) -> AsyncIterator[None]:
        await self.acquire(band)
        try:
            yield
        finally:
            self.release(band)
