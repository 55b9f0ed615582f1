"""A shell run's output pipe: read to EOF from the loop, and its fd closed exactly once,
however the reading ends."""

from __future__ import annotations

import asyncio
import os

import pytest

from jobsched.worker.capture import OutputBuffer
from jobsched.worker.shell import _read_pipe


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


async def test_reads_everything_written_until_eof_then_closes_its_fd() -> None:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    output = OutputBuffer(1 << 20)
    reading = _read_pipe(read_end, output)
    for part in (b"first ", b"x" * 200_000, b" last"):  # more than a pipe holds at once
        await asyncio.to_thread(os.write, write_end, part)  # a blocking writer, as a child
        await asyncio.sleep(0)
    os.close(write_end)
    await asyncio.wait_for(reading, 5)
    await asyncio.sleep(0)  # the close runs as the task's done callback
    data, total = output.snapshot()
    assert total == 200_011 and data.startswith(b"first x") and data.endswith(b"x last")
    assert _closed(read_end)


@pytest.mark.parametrize("started", [False, True])
async def test_a_cancelled_reading_closes_its_fd_too(started: bool) -> None:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        reading = _read_pipe(read_end, OutputBuffer(1024))
        if started:
            os.write(write_end, b"partial")
            await asyncio.sleep(0.05)  # it has read and waits for more
        reading.cancel()  # unstarted, its body never runs: the close must not depend on it
        with pytest.raises(asyncio.CancelledError):
            await reading
        await asyncio.sleep(0)
        assert _closed(read_end)
        # the number is free for the next open, and nothing closes it again later
        spare_read, spare_write = os.pipe2(os.O_CLOEXEC)
        await asyncio.sleep(0.05)
        assert not _closed(spare_read) and not _closed(spare_write)
        os.close(spare_read)
        os.close(spare_write)
    finally:
        os.close(write_end)
