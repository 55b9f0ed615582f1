"""Durations as people write them: one grammar (jobsched.domain.durations) for
`jobsched token create --expires-in` and `@every`.

Every input either grammar accepted before they became one keeps its value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobsched.domain.durations import DurationError, DurationTooLong, parse_duration
from jobsched.domain.schedule import ScheduleError, first_fire_at, parse_schedule
from jobsched.token_admin import TokenAdminError, parse_lifetime

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
    assert parse_lifetime(text) == value


@pytest.mark.parametrize(("text", "value"), EVERY_EXAMPLES)
def test_every_intervals_keep_their_value(text: str, value: timedelta) -> None:
    assert _every(text) == value


@pytest.mark.parametrize("text", ["", "0", "0s", "0d", "abc", "-5m", "5x", "1h 30m", "m"])
def test_a_token_lifetime_that_is_no_positive_duration_is_refused(text: str) -> None:
    with pytest.raises(TokenAdminError, match="duration"):
        parse_lifetime(text)


@pytest.mark.parametrize("text", ["5x", "1h 30m", "-5s", "1.0000001s", "h", "1.s", ".5s"])
def test_an_every_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ScheduleError, match="duration"):
        parse_schedule(f"@every {text}")


@pytest.mark.parametrize(("text", "value"), TOKEN_EXAMPLES + EVERY_EXAMPLES)
def test_one_grammar_gives_both_old_grammars_values(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5", timedelta(seconds=1.5)),  # bare seconds with decimals
        ("0.000001", timedelta(microseconds=1)),
        ("0", timedelta(0)),  # a duration; a caller may still want more than 0
        ("2w", timedelta(weeks=2)),
        ("1w2d", timedelta(days=9)),
        ("0.5w", timedelta(days=3, hours=12)),
        ("250ms", timedelta(milliseconds=250)),
        ("1m30s", timedelta(seconds=90)),
        ("999999999d", timedelta(days=999_999_999)),
        ("0.1s", timedelta(milliseconds=100)),  # exact: not 0.1 as a float
        ("1.1h", timedelta(hours=1, minutes=6)),
    ],
)
def test_the_union_of_both(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


def test_the_union_reaches_both_callers() -> None:
    assert parse_lifetime("1h30m") == timedelta(minutes=90)
    assert parse_lifetime("1.5h") == timedelta(minutes=90)
    assert parse_lifetime("2w") == timedelta(weeks=2)
    assert _every("90") == timedelta(seconds=90)
    assert _every("2w") == timedelta(weeks=2)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "5x",
        "1h 30m",
        "-5s",
        "+5s",
        "h",
        "ms",
        "1.s",
        ".5s",
        "1h30",
        "30 s",
        "1H",
        "1e3",
        "1_000",
        "1mo",
        "1,5h",
        "NaN",
        "inf",
    ],
)
def test_what_is_no_duration_is_refused_naming_it(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert str(caught.value).startswith(f"invalid duration {text!r}; use seconds (90, 1.5)")


def test_only_ascii_digits_are_numbers() -> None:
    """The one input that parsed before and no longer does: the old --expires-in took any
    Unicode digit (``\\d``), so Arabic-Indic "12m" was 12 minutes; @every never took
    non-ASCII text."""
    for text in ("\u0661\u0662m", "\u0661\u0662", "\uff11s"):
        with pytest.raises(DurationError, match="invalid duration"):
            parse_duration(text)


def test_a_value_finer_than_a_microsecond_is_refused_not_rounded() -> None:
    with pytest.raises(DurationError, match=r"^duration '1.0000001s' is finer than a micro"):
        parse_duration("1.0000001s")
    # Past 28 significant digits (where Decimal's default context would round): still seen.
    with pytest.raises(DurationError, match="finer than a microsecond"):
        parse_duration("1." + "0" * 30 + "1s")


def test_a_value_no_timedelta_holds_is_refused_naming_it() -> None:
    with pytest.raises(DurationTooLong, match=r"^duration '1000000000d' is longer than 999,9"):
        parse_duration("1000000000d")
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration("9" * 5000 + "s")  # more digits than Python converts: no ValueError
    with pytest.raises(TokenAdminError, match="1000000000d"):
        parse_lifetime("1000000000d")


def test_every_keeps_its_bounds_in_its_own_words() -> None:
    for text, reason in [
        ("500ms", "@every interval must be at least 1s, got 500ms"),
        ("0.5", "@every interval must be at least 1s, got 0.5"),
        ("1000000000d", "@every interval must be at most 3650d, got 1000000000d"),
        ("3651d", "@every interval must be at most 3650d, got 3651d"),
        (
            "5x",
            "invalid duration '5x'; use seconds (90, 1.5) or numbers with units ms, s, m, "
            "h, d or w, e.g. 30s, 15m, 1h30m",
        ),
    ]:
        with pytest.raises(ScheduleError) as caught:
            parse_schedule(f"@every {text}")
        assert str(caught.value) == reason


@pytest.mark.parametrize("every", [timedelta(days=12), timedelta(days=3650),
                                   timedelta(seconds=1.5), 90, 0.25, timedelta(hours=1)])
def test_the_clients_every_is_read_back_as_the_same_duration(every: timedelta | float) -> None:
    from jobsched.client import _every

    text = _every(every)
    assert "e" not in text.removeprefix("@every "), text
    expected = every if isinstance(every, timedelta) else timedelta(seconds=every)
    assert parse_duration(text.removeprefix("@every ")) == expected
