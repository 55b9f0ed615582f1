"""The worker's run slots, shared by the priority bands: a free slot goes at once to whoever
asks; when all are taken, each slot freed goes to a waiter of the band the weighted round
robin picks (jobsched.domain.priority), first come first served within a band."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from jobsched.domain.priority import DEFAULT_WEIGHTS, Priority, WeightedRoundRobin


class BandSlots:
    def __init__(self, capacity: int, weights: dict[Priority, int] | None = None) -> None:
        self.capacity = capacity
        self.free = capacity
        self._picks = WeightedRoundRobin(weights or DEFAULT_WEIGHTS)
        self._waiting: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            band: collections.deque() for band in Priority}

    def waiting(self, band: Priority) -> int:
        return sum(1 for f in self._waiting[band] if not f.done())

    async def acquire(self, band: Priority) -> None:
        if self.free > 0 and not any(self._waiting.values()):
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[band].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            raise

    def release(self) -> None:
        while True:
            bands = [b for b, queue in self._waiting.items() if queue]
            if not bands:
                self.free += 1
                return
            band = self._picks.pick(bands)
            future = self._waiting[band].popleft()
            if not future.done():
                future.set_result(None)
                return

    @contextlib.asynccontextmanager
    async def slot(self, band: Priority) -> AsyncIterator[None]:
        await self.acquire(band)
        try:
            yield
        finally:
            self.release()
