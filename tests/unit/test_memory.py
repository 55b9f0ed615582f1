"""Freed heap memory goes back to the OS (jobsched/memory.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from jobsched import memory
from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(not memory.can_release(), reason="no malloc_trim (not glibc)")

# A fresh process fragments its heap the way a long-running role does: blocks over 512
# bytes (malloc's, not pymalloc's) of mixed sizes come and go, a few stay, scattered
# through the heap, so glibc can give nothing back from its top when the rest is freed.
FRAGMENT = textwrap.dedent("""
    import random
    from jobsched.memory import release_free_memory

    def rss_mb():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    random.seed(7)
    kept, passing = [], []
    for i in range(60_000):
        passing.append(bytes(random.randint(600, 4000)))
        if i % 20 == 0:
            kept.append(bytes(700))
    del passing
    freed = rss_mb()
    released = release_free_memory()
    print(freed, rss_mb(), released)
""")


def test_freed_blocks_held_in_the_heap_are_given_back() -> None:
    done = subprocess.run([sys.executable, "-c", FRAGMENT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    freed, trimmed, released = done.stdout.split()
    # ~130 MB was freed but stays in RSS (the kept blocks pin the heap); the trim returns it.
    assert float(freed) - float(trimmed) > 80, done.stdout
    assert released == "True"


async def test_the_timer_trims_every_interval_until_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    stop = asyncio.Event()
    timer = asyncio.create_task(memory.release_free_memory_every(0.05, stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(timer, 1)
    assert 3 <= len(calls) <= 7 and set(calls) == {0}
    stopped_at = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == stopped_at


async def test_an_interval_of_zero_never_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    await asyncio.wait_for(memory.release_free_memory_every(0, asyncio.Event()), 1)
    assert calls == []
