"""Micro-batching: many concurrent callers, one set-based statement per flush.

The worker's claims and results go through here, so N messages in flight cost one
round trip and one commit instead of N, while a lone message waits at most ``max_delay``.
Items carry a priority band: a flush is filled by the same weighted round robin as the
worker's run slots (jobsched.domain.priority), so high work waiting behind a low backlog
goes out in the next flush, and low work still gets its share of every flush.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from jobsched.domain.priority import Priority, WeightedRoundRobin

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 500,
        max_delay: float = 0.002,
    ) -> None:
        self._flush = flush
        self._max_size = max_size
        self._max_delay = max_delay
        self._pending: dict[Priority, collections.deque[tuple[T, asyncio.Future[R]]]] = {
            band: collections.deque() for band in Priority}
        self._picks = WeightedRoundRobin()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    async def submit(self, item: T, band: Priority = Priority.NORMAL) -> R:
        """Queue one item; resolves with its result once its batch is flushed."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending[band].append((item, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """Up to max_size items, the bands served by weight (one band alone: in order)."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while len(batch) < self._max_size:
            waiting = [band for band, queue in self._pending.items() if queue]
            if not waiting:
                break
            if len(waiting) == 1:
                queue = self._pending[waiting[0]]
                while queue and len(batch) < self._max_size:
                    batch.append(queue.popleft())
                break
            batch.append(self._pending[self._picks.pick(waiting)].popleft())
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self) < self._max_size:
                await asyncio.sleep(self._max_delay)
            batch = self._take()
            if not len(self):
                self._wakeup.clear()
            if not batch:
                continue
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter sees the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
