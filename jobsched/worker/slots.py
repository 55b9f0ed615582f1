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

#: The bands, highest first (iterating the enum itself costs more, once per freed slot).
BANDS = tuple(Priority)


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
        # Live waiters per band, counted as they come and go: the worker reads this twice
        # per run, and counting the queue (thousands under a backlog) made it quadratic.
        self._live = dict.fromkeys(Priority, 0)

    def waiting(self, band: Priority) -> int:
        return self._live[band]

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
        self._live[band] += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(band)  # granted just as it was cancelled: pass the slot on
            else:
                self._live[band] -= 1  # gave up waiting (its future stays queued, done)
            raise

    def release(self, band: Priority) -> None:
        """Give back a slot ``band`` held: it goes to a waiter that may take it, by weight."""
        self.free += 1
        if band is not Priority.HIGH:
            self._others -= 1
        while self.free > 0:
            bands = [b for b in BANDS if self._queued(b) and self._may_take(b)]
            if not bands:
                return
            picked = bands[0] if len(bands) == 1 else self._picks.pick(bands)
            self._take(picked)
            self._live[picked] -= 1
            self._waiting[picked].popleft().set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, band: Priority) -> AsyncIterator[None]:
        await self.acquire(band)
        try:
            yield
        finally:
            self.release(band)


class Gate:
    """A counting semaphore, first come first served, whose acquire and release cost the
    same however many wait: asyncio.Semaphore (3.11) scans its waiters on every acquire
    and release, quadratic with the thousands of attempts a worker holds under a
    backlog."""

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a gate needs at least one place, got {value}")
        self.free = value
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()  # gave up waiting (cancelled)
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as it was cancelled: pass the place on
            raise

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free += 1
