"""Capped exponential backoff for the loops that outlive their dependencies (reconnects,
re-elections, retried writes). One helper instead of a hand-rolled ``delay = min(delay * 2,
cap)`` in every loop; tenacity was weighed and not taken: these are long-lived loops that
wait on a stop event and reset after each success, which tenacity's retry-a-call model
expresses less directly than these twenty lines."""

from __future__ import annotations

import asyncio
import contextlib


class Backoff:
    def __init__(self, initial: float = 0.2, cap: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.delay = initial

    def reset(self) -> None:
        self.delay = self.initial

    def next_delay(self) -> float:
        """The delay to wait now; the following one grows up to the cap."""
        delay = self.delay
        self.delay = min(self.delay * self.factor, self.cap)
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, or until ``stop`` is set."""
        await sleep_unless(stop, self.next_delay())


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep, returning early once ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
