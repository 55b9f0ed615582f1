"""Execution ids that say where their row is (issue 19, migration 015).

executions is partitioned by day of scheduled_for and keyed by (id, scheduled_for): a
lookup by id alone would read every day partition. An execution's id is made by
``jobsched_execution_id(scheduled_for)`` in PostgreSQL, an RFC 9562 UUIDv7 whose 48-bit
unix-ms timestamp is scheduled_for floored to the millisecond, so the id bounds
scheduled_for to one millisecond, and a query given that bound reads one partition. Ids
made before 015 are random (version 4): no bound, every partition is read, as before.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)

#: A bound on scheduled_for: [lower, upper), None on either side for no bound.
Window = tuple[datetime | None, datetime | None]
UNBOUNDED: Window = (None, None)


def scheduled_window(execution_id: uuid.UUID) -> tuple[datetime, datetime] | None:
    """The millisecond [lower, upper) that holds the execution's scheduled_for, read from
    its id; None for an id that is not a UUIDv7 (made before migration 015)."""
    if execution_id.version != 7:
        return None
    lower = _EPOCH + timedelta(milliseconds=execution_id.int >> 80)
    return lower, lower + _MS


def window_of(execution_id: uuid.UUID) -> Window:
    """``scheduled_window``, or no bound at all: the values for a query's ``:lo``, ``:hi``
    (``scheduled_for >= coalesce(:lo, '-infinity') AND scheduled_for < coalesce(:hi,
    'infinity')``)."""
    return scheduled_window(execution_id) or UNBOUNDED


def batch_window(execution_ids: Iterable[uuid.UUID],
                 scheduled_for: Iterable[datetime | None] | None = None) -> Window:
    """One bound on the scheduled_for of a batch of executions: each one's exact
    scheduled_for where the caller knows it, else its id's millisecond; no bound as soon as
    one has neither (an id from before 015), and none for an empty batch."""
    ids = list(execution_ids)
    known = list(scheduled_for) if scheduled_for is not None else [None] * len(ids)
    lowers, uppers = [], []
    for execution_id, day in zip(ids, known, strict=True):
        if day is not None:
            lowers.append(day)
            uppers.append(day + _US)
            continue
        window = scheduled_window(execution_id)
        if window is None:
            return UNBOUNDED
        lowers.append(window[0])
        uppers.append(window[1])
    if not lowers:
        return UNBOUNDED
    return min(lowers), max(uppers)
