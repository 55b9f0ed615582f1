"""Giving memory the process has freed back to the operating system.

CPython hands every block over 512 bytes (query results, message bodies, the tables of
large dicts and lists) to the C library's malloc. glibc keeps what is freed in its heap
for reuse and returns it only from the heap's top, so a long-running process whose
large blocks come and go at changing sizes keeps pages it no longer uses: the leader's
RSS rose ~1 MB a minute in `jobsched bench soak` while the bytes malloc had in use stayed
flat (15.3 → 15.4 MB in 5 minutes against 20.0 → 22.8 MB of heap), and one
``malloc_trim(0)`` took it from 79.1 to 72.2 MB. Every role calls it on a timer
(``memory_trim_interval_s``); it returns the free pages anywhere in the heap (glibc 2.8+)
and costs little (0.04 ms median, 0.65 ms at most, on a 20 MB heap; 15 ms when it
returned 120 MB). Elsewhere (musl, macOS) there is no ``malloc_trim`` and nothing is done.

The cyclic garbage collector is tuned once a role has started (``tune_collector``): what
the start made (modules, classes, settings, pools: most of the heap's objects, and never
garbage) is frozen out of every later collection, and the youngest generation is collected
every ``gc_threshold`` allocations rather than every 700. A run makes a few tasks, futures
and coroutine frames, so a busy role collected every few runs and, each time the older
generations' turn came, walked the whole heap again: in a burn-down of 20,000 no-op runs
the worker's CPU fell from 1.75 to 1.57 s (threshold 10,000) and 1.45 s (50,000), the
leader's from 0.65 to 0.57 s, with the same resident memory (about 90 MB), side by side.
Reference cycles are still collected, later.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

from jobsched.backoff import sleep_unless

log = logging.getLogger(__name__)


def tune_collector(threshold: int) -> None:
    """Freeze what exists now out of the garbage collector's passes and collect the youngest
    generation every ``threshold`` allocations (the older ones keep Python's ratios)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
    log.debug("garbage collector: %d objects frozen, thresholds %s", gc.get_freeze_count(),
              gc.get_threshold())


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_malloc_trim = _find_malloc_trim()


def can_release() -> bool:
    """Whether this C library can give freed heap pages back (glibc)."""
    return _malloc_trim is not None


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS; True if any were."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))


async def release_free_memory_every(interval_s: float, stop: asyncio.Event) -> None:
    """``release_free_memory`` every ``interval_s`` seconds until ``stop``."""
    if interval_s <= 0 or not can_release():
        return
    while True:
        await sleep_unless(stop, interval_s)
        if stop.is_set():
            return
        began = time.perf_counter()
        released = release_free_memory()
        log.debug("malloc_trim: %s in %.1f ms", "released" if released else "nothing",
                  (time.perf_counter() - began) * 1000)
