"""The scheduled_for bound an execution id carries (migration 015): UUIDv7 ids give their
millisecond, older random ids none, and a batch's bound covers every member or is none."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

from jobsched.domain.execution_ids import UNBOUNDED, batch_window, scheduled_window, window_of


def _v7(at: datetime) -> uuid.UUID:
    """As jobsched_execution_id(at) makes it: 48 bits of unix ms, version 7, variant 10."""
    ms = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=value)


def test_a_v7_id_gives_the_millisecond_of_its_scheduled_for() -> None:
    at = datetime(2026, 12, 3, 16, 10, 11, 123_956, tzinfo=UTC)
    lower, upper = scheduled_window(_v7(at)) or (None, None)
    assert lower == datetime(2026, 12, 3, 16, 10, 11, 123_000, tzinfo=UTC)
    assert upper == lower + timedelta(milliseconds=1)
    assert lower <= at < upper


def test_a_whole_second_is_the_lower_bound_itself() -> None:
    at = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
    assert scheduled_window(_v7(at)) == (at, at + timedelta(milliseconds=1))


def test_ids_made_before_the_migration_have_no_bound() -> None:
    assert scheduled_window(uuid.uuid4()) is None
    assert window_of(uuid.uuid4()) == UNBOUNDED
    # version 7 in the version bits but not the RFC variant: not one of ours
    odd = uuid.UUID(int=_v7(datetime.now(UTC)).int & ~(0x3 << 62))
    assert scheduled_window(odd) is None


def test_a_batch_is_bounded_by_its_earliest_and_latest() -> None:
    first = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    last = datetime(2026, 12, 3, 9, 30, 0, 500, tzinfo=UTC)
    ids = [_v7(last), _v7(first)]
    assert batch_window(ids) == (first, datetime(2026, 12, 3, 9, 30, 0, 1000, tzinfo=UTC))
    # an exact scheduled_for, where known, bounds tighter than its id
    assert batch_window(ids, [last, None]) == (first, last + timedelta(microseconds=1))


def test_a_batch_with_an_old_id_or_nothing_in_it_has_no_bound() -> None:
    now = datetime.now(UTC)
    assert batch_window([_v7(now), uuid.uuid4()]) == UNBOUNDED
    assert batch_window([]) == UNBOUNDED
    # but an old id whose scheduled_for the caller knows is bounded
    assert batch_window([_v7(now), uuid.uuid4()], [None, now])[0] is not None
