"""Timers shared by runs: run timeouts (``Deadlines``) and the wait of a run fired ahead
until it is due (``Alarms``).

Timeouts: the deadlines of all the runs that end within the same ``GRAIN_S`` share one
timer, instead of one timer each.

``asyncio.timeout`` arms a loop timer per run and disarms it when the run ends: with many
short runs, that is a tenth of the worker's loop time per no-op run, and, with 1,000 runs
due at the same instant, part of the start lateness of the last one (issue 18). Here a run
joins the set of its deadline's grain (a dict lookup and a set add) and leaves it when it
ends; the grain's one timer cancels the runs still in it. A run therefore times out up to
``GRAIN_S`` after its timeout, never before. Cancellation and the ``TimeoutError`` raised
from it follow ``asyncio.timeout`` exactly (``Task.cancelling``/``uncancel``), so an outer
cancel still propagates as a cancel.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from types import TracebackType

GRAIN_S = 0.05


class Deadlines:
    """The grains of one event loop (a new loop starts afresh: timers belong to a loop)."""

    def __init__(self, grain_s: float = GRAIN_S) -> None:
        self.grain_s = grain_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grains: dict[int, set[RunTimeout]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def timeout(self, delay_s: float) -> RunTimeout:
        """``async with deadlines.timeout(s):`` as ``async with asyncio.timeout(s):``."""
        return RunTimeout(self, delay_s)

    def _join(self, run: RunTimeout, delay_s: float) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._grains, self._timers = loop, {}, {}
        grain = math.ceil((loop.time() + delay_s) / self.grain_s)
        runs = self._grains.get(grain)
        if runs is None:
            runs = self._grains[grain] = set()
            self._timers[grain] = loop.call_at(grain * self.grain_s, self._expire, grain)
        runs.add(run)
        return grain

    def _leave(self, run: RunTimeout, grain: int) -> None:
        runs = self._grains.get(grain)
        if runs is None:
            return
        runs.discard(run)
        if not runs:
            del self._grains[grain]
            self._timers.pop(grain).cancel()

    def _expire(self, grain: int) -> None:
        self._timers.pop(grain, None)
        for run in self._grains.pop(grain, ()):
            run.expire()


class RunTimeout:
    __slots__ = ("_cancelling", "_deadlines", "_delay_s", "_expired", "_grain", "_task")

    def __init__(self, deadlines: Deadlines, delay_s: float) -> None:
        self._deadlines = deadlines
        self._delay_s = delay_s
        self._expired = False

    async def __aenter__(self) -> RunTimeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a run timeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._grain = self._deadlines._join(self, self._delay_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._expired:
            self._deadlines._leave(self, self._grain)
            return
        # As asyncio.Timeout: our cancel is taken back; a cancel from outside stays one.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def expired(self) -> bool:
        return self._expired


class Alarms:
    """Waits until a wall-clock instant, one loop timer per millisecond of them: the runs
    due at the same instant (every-second cron jobs, a herd) wake in one callback, in the
    order they went to sleep, and start one after another before the loop turns to
    anything else (the results of runs that ended meanwhile come after). With a timer per
    run, the timers of one instant expired over a few loop turns, and each turn also took
    the results and claims that had come in: the last of 1,000 runs started later by all
    of that. A wait ends in the millisecond it is due (its end rounded up to the
    millisecond), never before. The state belongs to one event loop, as ``Deadlines``.

    Every wait reads the loop's clock as it goes to sleep: uvloop (libuv) times its wait
    for the next timer from the clock as it was last read, so a timer set at the start of
    a long loop turn (1,000 runs claimed together, each going to sleep here) fired as late
    as the rest of that turn took (6-10 ms in ``jobsched bench lateness``, 13 ms after
    1,000 sleeps of 10 µs each). What the turn does after the last wait still delays it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}

    async def until(self, when: datetime) -> None:
        """Return once ``when`` (aware) has come: at once if it has."""
        alarm = self.alarm(when)
        if alarm is not None:
            await alarm

    def alarm(self, when: datetime) -> asyncio.Future[None] | None:
        """A future resolved once ``when`` (aware) has come, None if it has: for what is
        done then without waking a task (a cancel of it cancels only itself)."""
        due = math.ceil(when.timestamp() * 1000)
        ahead = due / 1000 - time.time()
        if ahead <= 0:
            return None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._waiting = loop, {}
        waiters = self._waiting.get(due)
        if waiters is None:
            waiters = self._waiting[due] = []
            loop.call_at(loop.time() + ahead, self._ring, due)
        else:
            loop.time()  # uvloop's clock, read now (see above)
        future: asyncio.Future[None] = loop.create_future()
        waiters.append(future)
        return future

    def _ring(self, due: int) -> None:
        ahead = due / 1000 - time.time()
        if ahead > 0 and self._loop is not None:  # the loop's timer came a little early
            self._loop.call_at(self._loop.time() + ahead, self._ring, due)
            return
        for future in self._waiting.pop(due, ()):
            if not future.done():
                future.set_result(None)
