"""Micro-batching: many concurrent callers, one set-based statement per flush.

The worker's claims and results go through here, so N messages in flight cost one
round trip and one commit instead of N, while a lone message waits at most ``max_delay``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

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
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue one item; resolves with its result once its batch is flushed."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self._max_size:
                await asyncio.sleep(self._max_delay)
            batch, self._pending = self._pending[: self._max_size], self._pending[self._max_size :]
            if not self._pending:
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
