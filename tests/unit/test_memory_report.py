"""The SIGUSR1 memory report names the line that allocated, not the event loop's frames
every allocation shares."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Iterator

import pytest

from jobsched.runtime import MemoryReport

KEPT: list[bytes] = []


def _grow() -> None:
    KEPT.extend(bytes(1024) + bytes([i % 256]) for i in range(2000))  # the allocating line


@pytest.fixture
def tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(8)
    try:
        yield
    finally:
        KEPT.clear()
        if started:
            tracemalloc.stop()


def test_the_report_names_the_allocating_line_first(tracing: None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    report = MemoryReport(top=3)
    _grow()
    with caplog.at_level(logging.WARNING, logger="jobsched.runtime"):
        report.log_growth()
    top = caplog.records[-1].getMessage().splitlines()[1]
    first_frame = top.split(" at ", 1)[1].split(" <- ")[0]
    assert first_frame == f"{__file__}:{_grow.__code__.co_firstlineno + 1}", top
