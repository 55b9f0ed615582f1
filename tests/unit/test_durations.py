"""Durations as people write them: `jobsched token create --expires-in` and `@every`.

Every input either grammar accepted before they became one keeps its value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobsched.domain.schedule import ScheduleError, first_fire_at, parse_schedule
from jobsched.token_admin import TokenAdminError, parse_duration

# What `--expires-in` (token_admin.parse_duration) took: bare seconds or one of s m h d.
TOKEN_EXAMPLES = [
    ("90", timedelta(seconds=90)),
    ("3600", timedelta(hours=1)),
    ("1", timedelta(seconds=1)),
    ("90s", timedelta(seconds=90)),
    ("15m", timedelta(minutes=15)),
    ("12h", timedelta(hours=12)),
    ("30d", timedelta(days=30)),
    ("90d", timedelta(days=90)),
    ("015m", timedelta(minutes=15)),
    (" 2s ", timedelta(seconds=2)),
    ("100000d", timedelta(days=100_000)),
]

# What `@every` (schedule._parse_every) took: Go-style <number><unit> parts, summed.
EVERY_EXAMPLES = [
    ("30s", timedelta(seconds=30)),
    ("5m", timedelta(minutes=5)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("2h", timedelta(hours=2)),
    ("1d", timedelta(days=1)),
    ("1s", timedelta(seconds=1)),
    ("1500ms", timedelta(milliseconds=1500)),
    ("1.5h", timedelta(minutes=90)),
    ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("3650d", timedelta(days=3650)),
    ("90s", timedelta(seconds=90)),
    ("1s500ms", timedelta(milliseconds=1500)),
    ("0.5m", timedelta(seconds=30)),
    ("1.000001s", timedelta(seconds=1, microseconds=1)),
    ("1m1m", timedelta(minutes=2)),
    ("2.25d", timedelta(days=2, hours=6)),
]


def _every(text: str) -> timedelta:
    now = datetime(2026, 1, 15, 12, tzinfo=UTC)
    return first_fire_at(parse_schedule(f"@every {text}"), now) - now


@pytest.mark.parametrize(("text", "value"), TOKEN_EXAMPLES)
def test_token_lifetimes_keep_their_value(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(("text", "value"), EVERY_EXAMPLES)
def test_every_intervals_keep_their_value(text: str, value: timedelta) -> None:
    assert _every(text) == value


@pytest.mark.parametrize("text", ["", "0", "0s", "0d", "abc", "-5m", "5x", "1h 30m", "m"])
def test_a_token_lifetime_that_is_no_positive_duration_is_refused(text: str) -> None:
    with pytest.raises(TokenAdminError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["5x", "1h 30m", "-5s", "1.0000001s", "h", "1.s", ".5s"])
def test_an_every_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ScheduleError, match="duration"):
        parse_schedule(f"@every {text}")
