"""A run's output as it is written: what a python task prints (``print``, ``sys.stdout``,
``sys.stderr``) and logs (``logging``), and its traceback, go into that run's own buffer,
not the worker's stdout or log stream; a shell run's pipe and a process-isolated task's
stderr are read into one too. The worker flushes what is new of each running attempt's
buffer to the database every ``output_flush_s`` (``Worker._stream_output``).

Routing is by a context variable, not per-run global state: ``install`` puts a proxy on
``sys.stdout`` and ``sys.stderr`` once, and a handler on the root logger (with a filter on
its other handlers), and each writes to the buffer of the context it is called from. An
async task function runs in its run's asyncio task (a context of its own); a plain
function sets it in its worker thread's context for the call (``call_with_traceback``).
Threads a task starts itself do not inherit the context: what they print goes to the
worker's stdout as before.

Bounds: the first ``keep`` bytes are kept (the output limit plus the longest secret, so a
secret straddling the limit is whole when masked), the rest only counted: the recorded
output is the head, masked and then cut to ``output_limit_bytes`` with a note, as every
run kind's output is (``render_output``)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

# The log line's format and the traceback's are the child process's too, which imports
# jobsched.worker.child alone (it starts faster without the rest of the worker).
from jobsched.worker.child import LOG_DATE_FORMAT, LOG_FORMAT, traceback_text
from jobsched.worker.results import render_output
from jobsched.worker.secrets import MIN_MASKED_LENGTH, mask

T = TypeVar("T")



class OutputBuffer:
    """What a run wrote: the first ``keep`` bytes kept, the rest counted. Written from the
    run's thread or task, read by the worker's loop: a lock guards both. ``changes`` grows
    when what is kept changes (and once when the first byte past it arrives), so the
    worker flushes a run only when its recorded output would differ."""

    __slots__ = ("_data", "_lock", "_total", "changes", "keep")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.changes = 0
        self._data = bytearray()
        self._total = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            room = self.keep - len(self._data)
            if room > 0:
                self._data += data[:room]
                self.changes += 1
            elif self._total <= self.keep:
                self.changes += 1  # the first bytes past what is kept: the cut is noted
            self._total += len(data)

    def write_text(self, text: str) -> None:
        self.write(text.encode("utf-8", "backslashreplace"))

    @property
    def total(self) -> int:
        return self._total

    def snapshot(self) -> tuple[bytes, int]:
        with self._lock:
            return bytes(self._data), self._total

    def render(self, limit: int, masked: Sequence[str]) -> str | None:
        """The output as recorded when the run is over (None if it wrote nothing)."""
        data, total = self.snapshot()
        if not total:
            return None
        return render_output(data, total, limit, masked)

    def render_partial(self, limit: int, masked: Sequence[str]) -> str:
        """The output so far, of a run still going: as ``render``, less an incomplete
        UTF-8 character at the end and less a tail that could be the start of a secret
        not yet written whole (it would show unmasked until the rest arrived)."""
        data, total = self.snapshot()
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)
        text = text[:len(text) - _secret_prefix_at_end(text, masked)]
        shown = mask(text, masked) or ""
        encoded = shown.encode()
        if total <= len(data) and len(encoded) <= limit:
            return shown
        kept = encoded[:limit].decode("utf-8", errors="ignore")
        return f"{kept}\n[output truncated: {max(total - limit, 0)} more bytes]"


def _secret_prefix_at_end(text: str, secrets: Iterable[str]) -> int:
    """How many characters at the end of ``text`` could begin a secret (0 if none)."""
    held = 0
    for secret in secrets:
        if len(secret) < MIN_MASKED_LENGTH:
            continue
        start = max(0, len(text) - len(secret) + 1)
        while (start := text.find(secret[0], start)) != -1:
            if secret.startswith(text[start:]):
                held = max(held, len(text) - start)
                break
            start += 1
    return held


async def read_into(stream: asyncio.StreamReader, output: OutputBuffer) -> None:
    """Read a pipe to EOF into ``output`` as it comes (a shell run's, or a process-
    isolated task's stderr)."""
    while chunk := await stream.read(65_536):
        output.write(chunk)


_current: contextvars.ContextVar[OutputBuffer | None] = contextvars.ContextVar(
    "jobsched_run_output", default=None)


def current() -> OutputBuffer | None:
    """The buffer of the run whose code is running here, if any."""
    return _current.get()


@contextlib.contextmanager
def routed_to(buffer: OutputBuffer) -> Iterator[None]:
    """Within this block, in this context (an asyncio task's, or a thread's), prints and
    log records go to ``buffer``."""
    token = _current.set(buffer)
    try:
        yield
    finally:
        _current.reset(token)


def call_with_traceback(function: Callable[..., T], kwargs: dict[str, Any],
                        buffer: OutputBuffer) -> T:
    """Call a plain task function on a worker thread with its output routed to ``buffer``
    (set in the thread's own context, and reset after); if it raises, its traceback is
    written to its run's output before the exception goes on (the attempt's error stays
    ``Type: message``). No copy of the caller's context per run: its allocations, 1,000
    runs due at once, showed in their start lateness."""
    token = _current.set(buffer)
    try:
        return function(**kwargs)
    except Exception as exc:
        buffer.write_text(traceback_text(exc, skip=1))
        raise
    finally:
        _current.reset(token)


async def await_with_traceback(function: Callable[..., Any], kwargs: dict[str, Any],
                               buffer: OutputBuffer) -> Any:
    """As ``call_with_traceback``, for an async task function."""
    try:
        return await function(**kwargs)
    except Exception as exc:
        buffer.write_text(traceback_text(exc, skip=1))
        raise


class _RoutedStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a write from a run's context goes to
    that run's buffer, any other to the stream it replaced. Everything else (``fileno``,
    ``encoding``, ``isatty``, …) is the replaced stream's."""

    def __init__(self, original: TextIO) -> None:
        self._original = original

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is None:
            return self._original.write(text)
        buffer.write_text(text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for text in lines:
            self.write(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    @property
    def buffer(self) -> _RoutedBinary:
        """The binary stream under it (``sys.stdout.buffer.write(b"…")``), routed too."""
        return _RoutedBinary(self._original.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _RoutedBinary:
    """``sys.stdout.buffer`` or ``sys.stderr.buffer`` under a ``_RoutedStream``."""

    def __init__(self, original: Any) -> None:
        self._original = original

    def write(self, data: bytes) -> int:
        buffer = _current.get()
        if buffer is None:
            return int(self._original.write(data))
        buffer.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _RunLogHandler(logging.Handler):
    """Log records emitted in a run's context, formatted into its output."""

    def __init__(self) -> None:
        super().__init__()
        formatter = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
        formatter.converter = time.gmtime
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        buffer = _current.get()
        if buffer is None:
            return
        try:
            text = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - a bad record is logging's to report
            self.handleError(record)
            return
        buffer.write_text(text)


def outside_runs(record: logging.LogRecord) -> bool:
    """Filter of the worker's own log handlers: a record a run emitted is in its output."""
    return _current.get() is None


_HANDLER = _RunLogHandler()


def install() -> None:
    """Route runs' prints and log records to their buffers, for this process: the stream
    proxies go on ``sys.stdout``/``sys.stderr`` and the handler on the root logger once;
    the filter goes on every root handler not yet filtered (call again after logging is
    reconfigured). Outside a run nothing changes."""
    if not isinstance(sys.stdout, _RoutedStream):
        sys.stdout = _RoutedStream(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _RoutedStream):
        sys.stderr = _RoutedStream(sys.stderr)  # type: ignore[assignment]
    root = logging.getLogger()
    for handler in root.handlers:
        if handler is not _HANDLER and outside_runs not in handler.filters:
            handler.addFilter(outside_runs)
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)


def uninstall() -> None:
    """Undo ``install`` (tests)."""
    if isinstance(sys.stdout, _RoutedStream):
        sys.stdout = sys.stdout._original  # type: ignore[assignment]
    if isinstance(sys.stderr, _RoutedStream):
        sys.stderr = sys.stderr._original  # type: ignore[assignment]
    root = logging.getLogger()
    root.removeHandler(_HANDLER)
    for handler in root.handlers:
        handler.removeFilter(outside_runs)
