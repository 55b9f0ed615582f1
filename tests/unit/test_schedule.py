"""Schedule parsing and fire-time arithmetic, with the clock passed in (no sleeping).

Daylight-saving dates used below:
- Europe/Berlin 2026: spring forward 2026-03-29 01:00Z (02:00 CET -> 03:00 CEST),
  fall back 2026-10-25 01:00Z (03:00 CEST -> 02:00 CET).
- America/New_York 2026: spring forward 2026-03-08 07:00Z (02:00 EST -> 03:00 EDT),
  fall back 2026-11-01 06:00Z (02:00 EDT -> 01:00 EST).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobsched.domain.durations import HINT as DURATION_HINT
from jobsched.domain.schedule import (
    Schedule,
    ScheduleError,
    coalesce_next_fire,
    first_fire_at,
    next_fire_after,
    parse_schedule,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expr: str, after: datetime, n: int, tz: str = "UTC") -> list[datetime]:
    """The next ``n`` fires strictly after ``after``."""
    schedule = parse_schedule(expr, tz)
    out: list[datetime] = []
    t: datetime | None = after
    for _ in range(n):
        assert t is not None
        t = next_fire_after(schedule, t)
        assert t is not None
        out.append(t)
    return out


def rejected(expr: str, tz: str = "UTC") -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(expr, tz)
    return info.value


# ------------------------------------------------------------------ accepted forms


def test_immediate_fires_now_once() -> None:
    now = utc(2026, 1, 15, 12, 0, 0, 123456)
    s = parse_schedule("immediate")
    assert s.kind == "immediate"
    assert not s.is_recurring
    assert first_fire_at(s, now) == now
    assert next_fire_after(s, now) is None
    assert coalesce_next_fire(s, now, now + timedelta(days=1)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T09:00:00Z", utc(2026, 1, 1, 9)),
        ("2026-01-01T10:00:00+01:00", utc(2026, 1, 1, 9)),
        ("2026-01-01T04:00:00-05:00", utc(2026, 1, 1, 9)),
        ("2026-01-01T09:00:00.5Z", utc(2026, 1, 1, 9, 0, 0, 500000)),
        ("2026-01-01T09:00:00.123456789Z", utc(2026, 1, 1, 9, 0, 0, 123456)),
        ("2026-01-01t09:00:00z", utc(2026, 1, 1, 9)),
        ("2026-01-01 09:00:00+00:00", utc(2026, 1, 1, 9)),
        ("2026-01-01T05:30:00+05:30", utc(2026, 1, 1, 0)),
    ],
)
def test_at_accepts_rfc3339_with_offset(text: str, expected: datetime) -> None:
    s = parse_schedule(text)
    assert s.kind == "at"
    assert s.expression == text
    assert not s.is_recurring
    got = first_fire_at(s, utc(2025, 12, 1))
    assert got == expected
    assert got is not None and got.tzinfo is UTC
    assert next_fire_after(s, expected) is None


def test_at_in_the_past_fires_at_its_time_which_means_at_once() -> None:
    s = parse_schedule("2020-01-01T00:00:00Z")
    assert first_fire_at(s, utc(2026, 1, 1)) == utc(2020, 1, 1)


def test_timezone_does_not_shift_an_at_time() -> None:
    s = parse_schedule("2026-01-01T09:00:00Z", "Europe/Berlin")
    assert first_fire_at(s, utc(2025, 1, 1)) == utc(2026, 1, 1, 9)


def test_five_field_cron() -> None:
    s = parse_schedule("0 9 * * *")
    assert s.kind == "cron"
    assert s.is_recurring
    assert first_fire_at(s, utc(2026, 1, 15, 12)) == utc(2026, 1, 16, 9)
    assert next_fire_after(s, utc(2026, 1, 16, 9)) == utc(2026, 1, 17, 9)


def test_cron_uses_the_timezone() -> None:
    s = parse_schedule("0 9 * * *", "Europe/Berlin")
    assert first_fire_at(s, utc(2026, 1, 15, 12)) == utc(2026, 1, 16, 8)  # CET
    assert first_fire_at(s, utc(2026, 7, 15, 12)) == utc(2026, 7, 16, 7)  # CEST


def test_cron_first_fire_is_inclusive_of_now_and_whole_seconds() -> None:
    s = parse_schedule("0 9 * * *")
    assert first_fire_at(s, utc(2026, 1, 15, 9)) == utc(2026, 1, 15, 9)
    assert first_fire_at(s, utc(2026, 1, 15, 9, 0, 0, 1)) == utc(2026, 1, 16, 9)
    got = first_fire_at(s, utc(2026, 1, 15, 8, 59, 59, 999999))
    assert got == utc(2026, 1, 15, 9)
    assert got is not None and got.microsecond == 0 and got.tzinfo is UTC


def test_six_field_cron_has_seconds_first() -> None:
    s = parse_schedule("*/5 * * * * *")
    assert first_fire_at(s, utc(2026, 1, 15, 10)) == utc(2026, 1, 15, 10)
    assert first_fire_at(s, utc(2026, 1, 15, 10, 0, 1)) == utc(2026, 1, 15, 10, 0, 5)
    assert first_fire_at(s, utc(2026, 1, 15, 10, 0, 0, 1)) == utc(2026, 1, 15, 10, 0, 5)
    assert fires("*/5 * * * * *", utc(2026, 1, 15, 10, 0, 57), 3) == [
        utc(2026, 1, 15, 10, 1, 0),
        utc(2026, 1, 15, 10, 1, 5),
        utc(2026, 1, 15, 10, 1, 10),
    ]
    assert fires("30 0 9 * * *", utc(2026, 1, 15, 12), 2) == [
        utc(2026, 1, 16, 9, 0, 30),
        utc(2026, 1, 17, 9, 0, 30),
    ]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@monthly", utc(2026, 2, 1)),
        ("@weekly", utc(2026, 1, 18)),  # Sunday
        ("@daily", utc(2026, 1, 16)),
        ("@midnight", utc(2026, 1, 16)),
        ("@hourly", utc(2026, 1, 15, 13)),
        ("@DAILY", utc(2026, 1, 16)),
    ],
)
def test_macros(macro: str, expected: datetime) -> None:
    s = parse_schedule(macro)
    assert s.kind == "cron"
    assert first_fire_at(s, utc(2026, 1, 15, 12, 0, 1)) == expected  # a Thursday


def test_macro_timezone() -> None:
    s = parse_schedule("@daily", "America/New_York")
    assert first_fire_at(s, utc(2026, 1, 15, 12)) == utc(2026, 1, 16, 5)


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("@every 30s", timedelta(seconds=30)),
        ("@every 5m", timedelta(minutes=5)),
        ("@every 1h30m", timedelta(hours=1, minutes=30)),
        ("@every 2h", timedelta(hours=2)),
        ("@every 1d", timedelta(days=1)),
        ("@every 1s", timedelta(seconds=1)),
        ("@every 1500ms", timedelta(milliseconds=1500)),
        ("@every 1.5h", timedelta(minutes=90)),
        ("@every 1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("@EVERY 10s", timedelta(seconds=10)),
        ("@every 3650d", timedelta(days=3650)),
        ("@every 30", timedelta(seconds=30)),  # bare seconds, as --expires-in takes them
        ("@every 2w", timedelta(weeks=2)),
    ],
)
def test_every_durations(text: str, interval: timedelta) -> None:
    now = utc(2026, 1, 15, 12, 0, 0, 250000)
    s = parse_schedule(text)
    assert s.kind == "every"
    assert s.is_recurring
    assert first_fire_at(s, now) == now + interval


def test_every_keeps_its_phase() -> None:
    s = parse_schedule("@every 90s")
    now = utc(2026, 1, 15, 12, 0, 0, 250000)
    first = first_fire_at(s, now)
    assert first == utc(2026, 1, 15, 12, 1, 30, 250000)
    assert next_fire_after(s, first) == utc(2026, 1, 15, 12, 3, 0, 250000)


def test_every_is_elapsed_time_across_dst() -> None:
    # Berlin falls back at 01:00Z: an interval job does not notice.
    assert fires("@every 1h", utc(2026, 10, 24, 23, 30), 3, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2, 30),
    ]
    # New York springs forward at 07:00Z.
    assert fires("@every 30m", utc(2026, 3, 8, 6, 15), 3, "America/New_York") == [
        utc(2026, 3, 8, 6, 45),
        utc(2026, 3, 8, 7, 15),
        utc(2026, 3, 8, 7, 45),
    ]


def test_expression_is_kept_verbatim_and_schedule_is_frozen() -> None:
    s = parse_schedule("  0 9  * * *  ", "Europe/Berlin")
    assert s.expression == "  0 9  * * *  "
    assert s.timezone == "Europe/Berlin"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kind = "at"  # type: ignore[misc]
    assert isinstance(s, Schedule)


def test_every_valid_timezone_is_accepted_for_every_kind() -> None:
    for text in ("immediate", "2026-01-01T09:00:00Z", "@every 1m", "0 9 * * *"):
        assert parse_schedule(text, "Asia/Kathmandu").timezone == "Asia/Kathmandu"


# ------------------------------------------------------------------ cron features


def test_question_mark_means_star_in_day_fields() -> None:
    after = utc(2026, 1, 15)
    assert fires("0 0 ? * MON", after, 3) == fires("0 0 * * MON", after, 3)
    assert fires("0 0 1 * ?", after, 3) == [utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1)]


def test_vixie_or_when_both_day_fields_are_restricted() -> None:
    # 2026-01-15 is a Thursday; 2026-02-01 is a Sunday: it fires as "the 1st".
    assert fires("0 0 1 * MON", utc(2026, 1, 15), 5) == [
        utc(2026, 1, 19),
        utc(2026, 1, 26),
        utc(2026, 2, 1),
        utc(2026, 2, 2),
        utc(2026, 2, 9),
    ]


def test_day_fields_are_anded_when_one_starts_with_star() -> None:
    # Vixie cron: "*/10" starts with '*', so a day must be the 1st/11th/21st/31st AND Monday.
    assert fires("0 0 */10 * MON", utc(2026, 1, 1), 3) == [
        utc(2026, 5, 11),
        utc(2026, 6, 1),
        utc(2026, 8, 31),
    ]


def test_last_day_of_month() -> None:
    assert fires("0 0 L * *", utc(2026, 2, 10), 3) == [
        utc(2026, 2, 28),
        utc(2026, 3, 31),
        utc(2026, 4, 30),
    ]


def test_nth_weekday() -> None:
    assert fires("0 0 * * MON#2", utc(2026, 1, 15), 2) == [utc(2026, 2, 9), utc(2026, 3, 9)]


def test_last_weekday_and_nearest_weekday() -> None:
    assert fires("0 0 * * L5", utc(2026, 2, 1), 2) == [utc(2026, 2, 27), utc(2026, 3, 27)]
    # The 15th of Feb and Mar 2026 are Sundays: the nearest weekday is Monday the 16th.
    assert fires("0 0 15W * *", utc(2026, 2, 1), 2) == [utc(2026, 2, 16), utc(2026, 3, 16)]


def test_month_and_day_names() -> None:
    assert fires("0 12 * JAN,feb MON-FRI", utc(2026, 2, 26), 3) == [
        utc(2026, 2, 26, 12),
        utc(2026, 2, 27, 12),
        utc(2027, 1, 1, 12),
    ]


def test_february_29_is_accepted() -> None:
    assert fires("0 0 29 2 *", utc(2026, 3, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_tabs_and_runs_of_spaces_separate_fields() -> None:
    assert fires("0\t9   * * *", utc(2026, 1, 15, 12), 1) == [utc(2026, 1, 16, 9)]


# ------------------------------------------------------------------ dialects: day forms


def test_both_day_fields_restricted_with_quartz_forms_fire_on_either() -> None:
    # Vixie's OR: the 8th, or the third Friday (16 Jan, 20 Feb 2026).
    assert fires("0 0 8 * 5#3", utc(2026, 1, 1), 4) == [
        utc(2026, 1, 8),
        utc(2026, 1, 16),
        utc(2026, 2, 8),
        utc(2026, 2, 20),
    ]
    # The last day, or a Monday, or the first Friday.
    assert fires("0 0 L * MON,5#1", utc(2026, 1, 25), 5) == [
        utc(2026, 1, 26),
        utc(2026, 1, 31),
        utc(2026, 2, 2),
        utc(2026, 2, 6),
        utc(2026, 2, 9),
    ]


def test_a_star_led_day_field_still_intersects_with_quartz_forms() -> None:
    # '*/2' starts with '*': odd days that are also the third Friday (17 Apr 2026).
    assert fires("0 0 */2 * 5#3", utc(2026, 1, 1), 2) == [utc(2026, 4, 17), utc(2026, 5, 15)]


@pytest.mark.parametrize(
    ("expr", "after", "want"),
    [
        # L-3: the third-to-last day (28 Jan, 25 Feb, 28 Mar 2026).
        ("0 0 L-3 * *", utc(2026, 1, 1), [utc(2026, 1, 28), utc(2026, 2, 25), utc(2026, 3, 28)]),
        # LW: the last weekday (31 Jan 2026 is a Saturday, 31 May a Sunday).
        ("0 0 LW * *", utc(2026, 1, 1), [utc(2026, 1, 30), utc(2026, 2, 27), utc(2026, 3, 31)]),
        ("0 0 LW 5 *", utc(2026, 1, 1), [utc(2026, 5, 29), utc(2027, 5, 31), utc(2028, 5, 31)]),
        # L-2W: the weekday nearest the second-to-last day (29 Mar 2026 is a Sunday).
        ("0 0 L-2W 3 *", utc(2026, 1, 1), [utc(2026, 3, 30), utc(2027, 3, 29), utc(2028, 3, 29)]),
        # 5L, FRIL, L5: the last Friday.
        ("0 0 * * 5L", utc(2026, 1, 1), [utc(2026, 1, 30), utc(2026, 2, 27), utc(2026, 3, 27)]),
        ("0 0 * * FRIL", utc(2026, 1, 1), [utc(2026, 1, 30), utc(2026, 2, 27), utc(2026, 3, 27)]),
        ("0 0 * * L5", utc(2026, 1, 1), [utc(2026, 1, 30), utc(2026, 2, 27), utc(2026, 3, 27)]),
        # A lone L in the day of week is Quartz's last day of the week: Saturday.
        ("0 0 ? * L", utc(2026, 1, 1), [utc(2026, 1, 3), utc(2026, 1, 10), utc(2026, 1, 17)]),
        # 15W: 15 Feb and 15 Mar 2026 are Sundays -> Monday the 16th.
        ("0 0 15W * *", utc(2026, 2, 1), [utc(2026, 2, 16), utc(2026, 3, 16), utc(2026, 4, 15)]),
        # 1W never leaves the month: 1 Aug 2026 is a Saturday -> Monday the 3rd.
        ("0 0 1W 8 *", utc(2026, 1, 1), [utc(2026, 8, 3), utc(2027, 8, 2), utc(2028, 8, 1)]),
        # 31W: 31 Jan 2027 is a Sunday, the last day -> Friday the 29th.
        ("0 0 31W 1 *", utc(2026, 6, 1), [utc(2027, 1, 29), utc(2028, 1, 31), utc(2029, 1, 31)]),
        # #: ranges and names of weekdays; each gets its n-th.
        ("0 0 * 1 mon-wed#2", utc(2026, 1, 1), [utc(2026, 1, 12), utc(2026, 1, 13),
                                                utc(2026, 1, 14)]),
        # Lists mixing the forms (croniter refuses '1#1,fri').
        ("0 0 * 1 1#1,fri", utc(2026, 1, 1), [utc(2026, 1, 2), utc(2026, 1, 5), utc(2026, 1, 9)]),
        ("0 0 1,15W,L * *", utc(2026, 1, 31),
         [utc(2026, 2, 1), utc(2026, 2, 16), utc(2026, 2, 28)]),
        # Quartz's year field (seconds first, year last).
        ("0 0 12 1 1 ? 2027,2030-2032/2", utc(2026, 1, 1),
         [utc(2027, 1, 1, 12), utc(2030, 1, 1, 12), utc(2032, 1, 1, 12)]),
    ],
)
def test_quartz_day_forms(expr: str, after: datetime, want: list[datetime]) -> None:
    assert fires(expr, after, len(want)) == want


def test_nearest_weekday_does_not_fire_in_a_month_without_that_day() -> None:
    # Quartz: 30W has no 30th to be near in February, so February has no fire (croniter
    # alone would fire on the 27th).
    assert fires("0 0 30W * *", utc(2026, 1, 15), 3) == [
        utc(2026, 1, 30),
        utc(2026, 3, 30),
        utc(2026, 4, 30),
    ]
    # L-30 exists only in 31-day months (the 1st).
    assert fires("0 0 L-30 * *", utc(2026, 1, 2), 2) == [utc(2026, 3, 1), utc(2026, 5, 1)]


def test_an_nth_weekday_that_a_month_lacks_skips_that_month() -> None:
    # A fifth Friday: May 2026 (1, 8, 15, 22, 29), then July (3 ... 31).
    assert fires("0 0 * * 5#5", utc(2026, 5, 1), 2) == [utc(2026, 5, 29), utc(2026, 7, 31)]


def test_quartz_forms_keep_the_debian_dst_rules() -> None:
    # Berlin's spring-forward day 2026 is the last Sunday of March: 02:30 does not exist,
    # the fixed-time job runs once at 03:00 CEST; the */20 job skips the gap.
    assert fires("30 2 * * SUNL", utc(2026, 3, 1), 2, "Europe/Berlin") == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 4, 26, 0, 30),
    ]
    # Fall-back day (the last Sunday of October, 25 Oct 2026 = L-6): a fixed-time job
    # runs once, at the first 02:30; "*/20" runs in both passes through 02:xx.
    assert fires("30 2 L-6 10 *", utc(2026, 10, 1), 2, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 30),
        utc(2027, 10, 25, 0, 30),  # 25 Oct 2027 is still summer time
    ]
    assert fires("30 2 * 10 7L", utc(2026, 10, 1), 2, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 30),
        utc(2027, 10, 31, 0, 30),  # fall-back day too: the first pass
    ]
    assert fires("*/20 2 * 10 0L", utc(2026, 10, 1), 6, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 0) + timedelta(minutes=20 * k) for k in range(6)
    ]


# ------------------------------------------------------------------ dialects: hashed values

JOB = uuid.UUID("6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b").bytes


def seeded(expr: str, seed: bytes, tz: str = "UTC") -> Schedule:
    schedule = parse_schedule(expr, tz, seed)
    assert not schedule.needs_seed
    return schedule


def test_hashed_values_are_pinned_to_sha256_of_the_seed_and_field() -> None:
    # Changing the hash would move every H job's fires: these values are the contract.
    s = seeded("H H H H *", JOB)
    assert first_fire_at(s, utc(2026, 1, 1)) == utc(2026, 12, 15, 16, 56)
    assert fires_of(seeded("H/15 * * * *", JOB), utc(2026, 1, 1), 4) == [
        utc(2026, 1, 1, 0, 11), utc(2026, 1, 1, 0, 26), utc(2026, 1, 1, 0, 41),
        utc(2026, 1, 1, 0, 56),
    ]
    digest = hashlib.sha256(b"jobsched cron H\x00" + JOB + b"\x00minute").digest()
    assert int.from_bytes(digest[:8], "big") % 60 == 56


def fires_of(schedule: Schedule, start: datetime, n: int) -> list[datetime]:
    out: list[datetime] = []
    t = first_fire_at(schedule, start)
    while t is not None and len(out) < n:
        out.append(t)
        t = next_fire_after(schedule, t)
    return out


def test_a_hashed_value_does_not_move_when_other_fields_change() -> None:
    minute_of = {
        expr: first_fire_at(seeded(expr, JOB), utc(2026, 1, 1)).minute  # type: ignore[union-attr]
        for expr in ("H * * * *", "H 9 * * *", "H 10 * * 1-5", "0 H * * * *", "0 H 3 1 * ? 2027")
    }
    assert set(minute_of.values()) == {56}
    # A 6-field expression's second is a field of its own, hashed apart from the minute.
    assert first_fire_at(seeded("H 0 * * * *", JOB), utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 0, 17)


def test_hashed_values_spread_jobs_evenly() -> None:
    counts = Counter(
        first_fire_at(seeded("H * * * *", uuid.UUID(int=i * 7919).bytes), utc(2026, 1, 1))
        .minute  # type: ignore[union-attr]
        for i in range(6000)
    )
    # 100 expected per minute; a fair hash stays well within +-40 (over 10 sigma apart).
    assert len(counts) == 60
    assert min(counts.values()) > 60 and max(counts.values()) < 140
    hours = Counter(
        first_fire_at(seeded("0 H * * *", uuid.UUID(int=i).bytes), utc(2026, 1, 1))
        .hour  # type: ignore[union-attr]
        for i in range(2400)
    )
    assert len(hours) == 24 and min(hours.values()) > 60 and max(hours.values()) < 140


def test_hashed_forms() -> None:
    start = utc(2026, 1, 1)
    for i in range(200):
        seed = i.to_bytes(2, "big")
        # H(0-29): one minute in the first half hour.
        first = first_fire_at(seeded("H(0-29) * * * *", seed), start)
        assert first is not None and first.minute < 30
        # H/15: four minutes, 15 apart, the first in 0-14.
        quarter = [f.minute for f in fires_of(seeded("H/15 * * * *", seed), start, 4)]
        assert quarter[0] < 15 and quarter == [quarter[0] + 15 * k for k in range(4)]
        # H(22-2) in hours wraps past midnight (Jenkins).
        hour = first_fire_at(seeded("0 H(22-2) * * *", seed), start).hour  # type: ignore[union-attr]
        assert hour in (22, 23, 0, 1, 2)
        # A bare H in the day of month is 1-28 (Jenkins: every month has it), in the day of
        # week 0-6.
        day = first_fire_at(seeded("0 0 H * *", seed), start).day  # type: ignore[union-attr]
        assert 1 <= day <= 28
        # cronie: a~b and ~ pick one value of the range.
        minute = first_fire_at(seeded("10~20 * * * *", seed), start).minute  # type: ignore[union-attr]
        assert 10 <= minute <= 20


def test_h_slash_one_is_h_as_in_jenkins() -> None:
    assert fires_of(seeded("H/1 * * * *", JOB), utc(2026, 1, 1), 2) == fires_of(
        seeded("H * * * *", JOB), utc(2026, 1, 1), 2
    )


def test_without_a_seed_a_hashed_schedule_validates_but_has_no_fire_times() -> None:
    s = parse_schedule("H H * * *")
    assert s.kind == "cron" and s.needs_seed
    with pytest.raises(ValueError, match="hashed values"):
        first_fire_at(s, utc(2026, 1, 1))
    # Expressions without hashed values ignore the seed: one cached parse for every job.
    assert parse_schedule("0 9 * * *", "UTC", JOB) is parse_schedule("0 9 * * *")
    assert parse_schedule("H H * * *", "UTC", JOB) is parse_schedule("H H * * *", "UTC", JOB)
    with pytest.raises(TypeError):
        parse_schedule("H H * * *", "UTC", "not bytes")  # type: ignore[arg-type]


def test_validity_of_a_hashed_expression_does_not_depend_on_the_seed() -> None:
    # Some job ids would pick the 30th or 31st, which February never has: refused for all.
    for seed in (None, JOB, b"", b"x"):
        with pytest.raises(ScheduleError, match="can never fire for a job whose hashed values"):
            parse_schedule("0 0 H(29-31) 2 *", "UTC", seed)
    # 28 or 29: every job fires (the 29th in leap years).
    for i in range(50):
        s = parse_schedule("0 0 H(28-29) 2 *", "UTC", bytes([i]))
        assert first_fire_at(s, utc(2026, 3, 1)) in (utc(2027, 2, 28), utc(2028, 2, 29))


def test_hashed_fixed_time_job_follows_the_debian_dst_rules() -> None:
    # "H(20-40) 2 * * *" is fixed-time (H is one value): on Berlin's spring-forward day it
    # runs once at 03:00 CEST; on fall-back day once, in the first pass. "H/30 2 * * *" is
    # a step: it follows elapsed time.
    for seed in (JOB, b"a", b"b"):
        fixed = seeded("H(20-40) 2 * * *", seed, "Europe/Berlin")
        assert next_fire_after(fixed, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)
        fall = fires_of(fixed, utc(2026, 10, 24, 12), 2)
        assert fall[0].hour == 0 and fall[1].date() == utc(2026, 10, 26).date()
        stepped = seeded("H/30 2 * * *", seed, "Europe/Berlin")
        assert fires_of(stepped, utc(2026, 3, 28, 12), 2)[1].date() == utc(2026, 3, 30).date()
        assert len([f for f in fires_of(stepped, utc(2026, 10, 24, 12), 6)
                    if f.date() == utc(2026, 10, 25).date()]) == 4


def test_macros_keep_vixie_meaning() -> None:
    # Jenkins hashes @hourly and friends; jobsched keeps Vixie's fixed times (write
    # "H * * * *" for Jenkins' meaning).
    hourly = parse_schedule("@hourly", "UTC", JOB)
    assert not hourly.needs_seed
    assert first_fire_at(hourly, utc(2026, 1, 1, 0, 1)) == utc(2026, 1, 1, 1)


def test_reboot_and_random_values_are_refused_with_the_reason() -> None:
    assert "no meaning for a scheduler cluster" in str(rejected("@reboot"))
    assert "random (R) values are not supported" in str(rejected("R * * * *"))


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty_is_rejected(text: str) -> None:
    err = rejected(text)
    assert str(err) == "schedule must not be empty"
    assert err.field == "schedule"


@pytest.mark.parametrize(
    "text", ["TZ=Europe/Berlin 0 9 * * *", "CRON_TZ=UTC 0 9 * * *", "cron_tz=UTC 0 9 * * *"]
)
def test_tz_prefix_is_rejected(text: str) -> None:
    assert str(rejected(text)) == (
        "a TZ=/CRON_TZ= prefix is not supported; put the zone in the timezone field"
    )


def test_too_long_is_rejected() -> None:
    text = "0 9 * * " + ",".join(["1"] * 100)
    assert len(text) > 200
    assert str(rejected(text)) == f"schedule must be at most 200 characters, got {len(text)}"
    assert parse_schedule("0 " * 2 + "* * *" + " " * 190).kind == "cron"  # 199 chars


@pytest.mark.parametrize(
    ("text", "count"),
    [("* * * *", 4), ("0 0 0 * * * 2026 1", 8), ("immediately", 1), ("0", 1)],
)
def test_field_count_is_checked(text: str, count: int) -> None:
    assert str(rejected(text)) == f"cron expression must have 5, 6 or 7 fields, got {count}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("61 * * * *", "invalid cron minute field '61': out of range"),
        ("0 24 * * *", "invalid cron hour field '24': out of range"),
        ("0 0 0 * *", "invalid cron day-of-month field '0': out of range"),
        ("0 0 * 13 *", "invalid cron month field '13': out of range"),
        ("0 0 * * 8", "invalid cron day-of-week field '8': out of range"),
        ("0 0 * * FOO", "invalid cron day-of-week field 'FOO': not a valid value"),
        ("60 * * * * *", "invalid cron second field '60': out of range"),
        ("*/0 * * * *", "invalid cron minute field '*/0': step '0' is not acceptable"),
        ("1-2-3 * * * *", "invalid cron minute field '1-2-3': not a valid value"),
        (
            "? * * * *",
            "invalid cron minute field '?': '?' is only allowed in the day-of-month "
            "and day-of-week fields",
        ),
        (
            "0 R * * *",
            "cron hour field 'R': random (R) values are not supported (they would change "
            "each time the schedule is read); H picks a value per job and keeps it",
        ),
        (
            "R(0-9) * * * *",
            "cron minute field 'R(0-9)': random (R) values are not supported (they would "
            "change each time the schedule is read); H picks a value per job and keeps it",
        ),
        ("H(0-60) * * * *", "invalid cron minute field 'H(0-60)': out of range 0-59"),
        ("0 0 H(0-5) * *", "invalid cron day-of-month field 'H(0-5)': out of range 1-31"),
        (
            "H(30-10) * * * *",
            "invalid cron minute field 'H(30-10)': the range must not run backwards "
            "(only hours wrap)",
        ),
        ("H/61 * * * *", "invalid cron minute field 'H/61': the step must be between 1 and 60"),
        (
            "0 0 * * H(1-5)#2,thu#2",
            "invalid cron day-of-week field 'H(1-5)#2,thu#2': 'H(1-5)#2': a hashed value is "
            "a list item of its own: H, H(a-b), H/n, H(a-b)/n or a~b",
        ),
        (
            "H(0-9)/11,30 * * * *",
            "invalid cron minute field 'H(0-9)/11,30': 'H(0-9)/11': the step must be "
            "between 1 and 10",
        ),
        (
            "9~5 * * * *",
            "invalid cron minute field '9~5': the first number must not be above the second",
        ),
        (
            "0 0 0 * * ? H",
            "invalid cron year field 'H': hashed values are not supported in the year field",
        ),
        ("0 0 L-31 * *", "invalid cron day-of-month field 'L-31': at most L-30"),
        ("0 0 1,32W * *", "invalid cron day-of-month field '1,32W': '32W': the day must be 1-31"),
        ("0 0 1-15W * *", "invalid cron day-of-month field '1-15W': 'W' takes one day, e.g. "
                          "15W or LW"),
        ("0 0 * * 5#6", "invalid cron day-of-week field '5#6': '#' takes 1 to 5"),
        ("0 0 * * 5#0", "invalid cron day-of-week field '5#0': '#' takes 1 to 5"),
        ("0 0 * * FOO#1", "invalid cron day-of-week field 'FOO#1': not a valid value"),
        ("0 0 * * 8L", "invalid cron day-of-week field '8L': out of range"),
        ("0 0 0 1 1 ? 2100", "invalid cron year field '2100': out of range"),
        ("0 0 0 1 1 ? 2030-2026", "invalid cron year field '2030-2026': the range runs backwards"),
        ("0 61 0 L * *", "invalid cron minute field '61': out of range"),
    ],
)
def test_invalid_cron_fields_are_named(text: str, reason: str) -> None:
    assert str(rejected(text)) == reason


@pytest.mark.parametrize(
    "text",
    [
        "0 0 30 2 *",
        "0 0 31 4 *",
        "0 0 31 2,4,6,9,11 *",
        "0 0 0 30 2 *",
        "0 0 30 2 ?",
        "0 0 30W 2 *",
        "0 0 L-29 2 *",
        "0 0 L-29,30W 2 ?",
        "0 0 0 29 2 ? 2025-2027",
    ],
)
def test_cron_that_can_never_fire_is_rejected(text: str) -> None:
    assert str(rejected(text)) == "cron expression can never fire"


def test_cron_that_fires_only_through_the_weekday_is_accepted() -> None:
    # Vixie OR: Feb 30 never exists, but every Monday in February matches.
    assert fires("0 0 30 2 MON", utc(2026, 1, 1), 2) == [utc(2026, 2, 2), utc(2026, 2, 9)]


@pytest.mark.parametrize(
    ("tz", "reason"),
    [
        ("Mars/Base", "unknown time zone 'Mars/Base'"),
        ("", "time zone must not be empty"),
        ("localtime", "unknown time zone 'localtime'"),
        ("../../etc/passwd", "unknown time zone '../../etc/passwd'"),
        ("/usr/share/zoneinfo/UTC", "unknown time zone '/usr/share/zoneinfo/UTC'"),
        ("europe/berlin", "unknown time zone 'europe/berlin'"),
        ("Europe/Berlin\x00", "unknown time zone 'Europe/Berlin\x00'"),
    ],
)
def test_unknown_timezone_is_rejected(tz: str, reason: str) -> None:
    err = rejected("0 9 * * *", tz)
    assert str(err) == reason
    assert err.field == "timezone"


def test_unknown_timezone_is_rejected_for_every_kind() -> None:
    for text in ("immediate", "2026-01-01T09:00:00Z", "@every 1m"):
        assert rejected(text, "Mars/Base").field == "timezone"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "2026-01-01T09:00:00",
            "timestamp '2026-01-01T09:00:00' has no UTC offset; add Z or an offset such as +01:00",
        ),
        (
            "2026-01-01",
            "'2026-01-01' is not an RFC 3339 timestamp; expected e.g. 2026-01-01T09:00:00Z",
        ),
        (
            "2026-01-01T09:00Z",
            "'2026-01-01T09:00Z' is not an RFC 3339 timestamp; expected e.g. 2026-01-01T09:00:00Z",
        ),
        (
            "2026-01-01T09:00:00+0100",
            "'2026-01-01T09:00:00+0100' is not an RFC 3339 timestamp; expected e.g. "
            "2026-01-01T09:00:00Z",
        ),
        (
            "2026-01-01T09:00:00+24:00",
            "timestamp '2026-01-01T09:00:00+24:00' has an invalid UTC offset",
        ),
        (
            "2026-02-30T09:00:00Z",
            "timestamp '2026-02-30T09:00:00Z' is not a valid time: day is out of range for month",
        ),
        (
            "2026-01-01T09:00:60Z",
            "timestamp '2026-01-01T09:00:60Z' is not a valid time: second must be in 0..59",
        ),
    ],
)
def test_bad_timestamps_are_rejected(text: str, reason: str) -> None:
    assert str(rejected(text)) == reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("@every", "@every needs a duration, e.g. '@every 30s' or '@every 1h30m'"),
        ("@every 500ms", "@every interval must be at least 1s, got 500ms"),
        ("@every 0s", "@every interval must be at least 1s, got 0s"),
        ("@every 3651d", "@every interval must be at most 3650d, got 3651d"),
        ("@every 99999999999999d", "@every interval must be at most 3650d, got 99999999999999d"),
        ("@every 5x", f"invalid duration '5x'; {DURATION_HINT}"),
        ("@every 1h 30m", f"invalid duration '1h 30m'; {DURATION_HINT}"),
        ("@every -5s", f"invalid duration '-5s'; {DURATION_HINT}"),
        ("@every 30 s", f"invalid duration '30 s'; {DURATION_HINT}"),
        ("@every 1.0000001s", "duration '1.0000001s' is finer than a microsecond"),
    ],
)
def test_bad_every_is_rejected(text: str, reason: str) -> None:
    assert str(rejected(text)) == reason


def test_unknown_macro_and_macro_arguments_are_rejected() -> None:
    assert str(rejected("@fortnightly")).startswith("unknown schedule macro '@fortnightly'")
    assert str(rejected("@daily 0")) == "schedule macro '@daily' takes no arguments"


def test_non_ascii_is_rejected() -> None:
    assert str(rejected("0 \u0669 * * *")) == (
        "schedule must contain only printable ASCII characters"
    )


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# ------------------------------------------------------------------ naive datetimes


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2026, 1, 1, 9)
    for text in ("immediate", "2026-01-01T09:00:00Z", "@every 1m", "0 9 * * *"):
        s = parse_schedule(text)
        with pytest.raises(ValueError, match="timezone-aware"):
            first_fire_at(s, naive)
        with pytest.raises(ValueError, match="timezone-aware"):
            next_fire_after(s, naive)
        with pytest.raises(ValueError, match="timezone-aware"):
            coalesce_next_fire(s, naive, utc(2026, 1, 1))
        with pytest.raises(ValueError, match="timezone-aware"):
            coalesce_next_fire(s, utc(2026, 1, 1), naive)


def test_aware_non_utc_input_is_converted_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    got = first_fire_at(parse_schedule("immediate"), datetime(2026, 1, 1, 11, tzinfo=plus2))
    assert got == utc(2026, 1, 1, 9)
    assert got is not None and got.tzinfo is UTC


# ------------------------------------------------------------------ coalescing


def test_coalesce_every_after_a_year_is_arithmetic() -> None:
    s = parse_schedule("@every 1s")
    scheduled_for = utc(2026, 1, 1, 0, 0, 0, 250000)
    started = time.perf_counter()
    got = coalesce_next_fire(s, scheduled_for, utc(2027, 1, 1))
    assert time.perf_counter() - started < 0.05
    assert got == utc(2027, 1, 1, 0, 0, 0, 250000)  # still on the .25 s grid


def test_coalesce_every_is_strictly_after_now_on_the_grid() -> None:
    s = parse_schedule("@every 1h30m")
    sf = utc(2026, 1, 1)
    assert coalesce_next_fire(s, sf, sf + 10 * timedelta(minutes=90)) == sf + 11 * timedelta(
        minutes=90
    )
    assert coalesce_next_fire(s, sf, utc(2026, 1, 1, 4)) == utc(2026, 1, 1, 4, 30)
    assert coalesce_next_fire(s, sf, sf) == utc(2026, 1, 1, 1, 30)
    # A clock behind the fire: simply the next one.
    assert coalesce_next_fire(s, sf, utc(2025, 12, 31)) == utc(2026, 1, 1, 1, 30)


def test_coalesce_cron() -> None:
    s = parse_schedule("0 * * * *")
    sf = utc(2026, 1, 1)
    assert coalesce_next_fire(s, sf, utc(2026, 1, 1, 5, 30)) == utc(2026, 1, 1, 6)
    assert coalesce_next_fire(s, sf, utc(2026, 1, 1, 6)) == utc(2026, 1, 1, 7)
    assert coalesce_next_fire(s, sf, utc(2025, 12, 31)) == utc(2026, 1, 1, 1)


def test_coalesce_every_second_cron_after_a_year_is_instant() -> None:
    s = parse_schedule("* * * * * *")
    started = time.perf_counter()
    got = coalesce_next_fire(s, utc(2025, 1, 1), utc(2026, 1, 1, 0, 0, 0, 500000))
    assert time.perf_counter() - started < 0.05
    assert got == utc(2026, 1, 1, 0, 0, 1)


def test_coalesce_one_shots_is_none() -> None:
    s = parse_schedule("2026-01-01T00:00:00Z")
    assert coalesce_next_fire(s, utc(2026, 1, 1), utc(2026, 2, 1)) is None


def test_coalesce_fixed_time_job_inside_the_repeated_hour_does_not_rerun() -> None:
    # The 02:30 CEST fire (00:30Z) was missed; it is now 02:15 CET, the second pass through
    # 02:xx. 02:30 CET must not fire again: the next fire is the next day's 02:30 CET.
    s = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert coalesce_next_fire(s, utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 1, 15)) == utc(
        2026, 10, 26, 1, 30
    )
    assert first_fire_at(s, utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 26, 1, 30)


# ------------------------------------------------------------------ daylight saving


def test_berlin_fixed_time_in_spring_gap_runs_once_at_end_of_gap() -> None:
    assert fires("30 2 * * *", utc(2026, 3, 27, 12), 3, "Europe/Berlin") == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_berlin_fixed_times_in_gap_collapse_into_one_fire() -> None:
    assert fires("0,30 2 * * *", utc(2026, 3, 28, 12), 3, "Europe/Berlin") == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 0),
        utc(2026, 3, 30, 0, 30),
    ]


def test_berlin_first_fire_inside_the_gap_day() -> None:
    s = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert first_fire_at(s, utc(2026, 3, 29, 0, 59)) == utc(2026, 3, 29, 1, 0)
    assert first_fire_at(s, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 1, 0)
    assert first_fire_at(s, utc(2026, 3, 29, 1, 0, 1)) == utc(2026, 3, 30, 0, 30)


def test_berlin_fixed_time_in_fall_overlap_runs_once_at_first_occurrence() -> None:
    assert fires("30 2 * * *", utc(2026, 10, 23, 12), 3, "Europe/Berlin") == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first pass; not 01:30Z as well
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_new_york_fixed_time_in_fall_overlap_runs_once() -> None:
    # croniter alone fires this twice on 2026-11-01 (05:30Z and 06:30Z).
    assert fires("30 1 * * *", utc(2026, 10, 30, 12), 3, "America/New_York") == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, first pass only
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_new_york_fixed_time_in_spring_gap_runs_at_end_of_gap() -> None:
    assert fires("30 2 * * *", utc(2026, 3, 6, 12), 3, "America/New_York") == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_fixed_time_with_seconds_field_runs_once_in_overlap() -> None:
    assert fires("0 30 2 * * *", utc(2026, 10, 24, 12), 2, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


def test_a_seconds_step_makes_a_job_follow_elapsed_time() -> None:
    # */30 in the seconds field: not fixed-time, so both passes through 02:30 fire.
    assert fires("*/30 30 2 * * *", utc(2026, 10, 24, 12), 4, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 30, 0),
        utc(2026, 10, 25, 0, 30, 30),
        utc(2026, 10, 25, 1, 30, 0),
        utc(2026, 10, 25, 1, 30, 30),
    ]


def test_berlin_hourly_follows_real_hours() -> None:
    # Spring: 01:00 CET, then 03:00 CEST: no 02:00 and no extra fire.
    assert fires("0 * * * *", utc(2026, 3, 28, 23, 30), 3, "Europe/Berlin") == [
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 2, 0),
    ]
    # Fall: 02:00 CEST and 02:00 CET both fire.
    assert fires("0 * * * *", utc(2026, 10, 24, 23, 30), 3, "Europe/Berlin") == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 2, 0),
    ]


def test_new_york_hourly_follows_real_hours() -> None:
    assert fires("0 * * * *", utc(2026, 3, 8, 5, 30), 3, "America/New_York") == [
        utc(2026, 3, 8, 6, 0),  # 01:00 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 8, 8, 0),
    ]
    assert fires("0 * * * *", utc(2026, 11, 1, 4, 30), 3, "America/New_York") == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
    ]


def every_15_min(start: datetime, n: int) -> list[datetime]:
    return [start + i * timedelta(minutes=15) for i in range(n)]


def test_berlin_quarter_hourly_follows_elapsed_time() -> None:
    # Fall: 02:00..02:45 CEST, then 02:00..02:45 CET, every 15 real minutes throughout.
    assert fires("*/15 * * * *", utc(2026, 10, 24, 23, 50), 10, "Europe/Berlin") == (
        every_15_min(utc(2026, 10, 25, 0, 0), 10)
    )
    # Spring: 01:45 CET then 03:00 CEST, 15 real minutes apart.
    assert fires("*/15 * * * *", utc(2026, 3, 29, 0, 40), 3, "Europe/Berlin") == (
        every_15_min(utc(2026, 3, 29, 0, 45), 3)
    )


def test_new_york_quarter_hourly_follows_elapsed_time() -> None:
    assert fires("*/15 * * * *", utc(2026, 11, 1, 4, 50), 10, "America/New_York") == (
        every_15_min(utc(2026, 11, 1, 5, 0), 10)
    )
    assert fires("*/15 * * * *", utc(2026, 3, 8, 6, 40), 3, "America/New_York") == (
        every_15_min(utc(2026, 3, 8, 6, 45), 3)
    )


def test_a_wildcard_minute_inside_the_repeated_hour_fires_in_both_passes() -> None:
    # "* 2 * * *" is not fixed-time (its minute is a wildcard): 2 x 60 fires on fall-back day.
    s = parse_schedule("* 2 * * *", "Europe/Berlin")
    got = []
    t: datetime | None = utc(2026, 10, 24, 23, 0)
    while True:
        assert t is not None
        t = next_fire_after(s, t)
        assert t is not None
        if t >= utc(2026, 10, 25, 12):
            break
        got.append(t)
    assert got == [utc(2026, 10, 25, 0, 0) + i * timedelta(minutes=1) for i in range(120)]


def test_a_wildcard_job_wholly_inside_the_gap_skips_that_day() -> None:
    assert fires("*/20 2 * * *", utc(2026, 3, 28, 12), 4, "Europe/Berlin") == [
        utc(2026, 3, 30, 0, 0),
        utc(2026, 3, 30, 0, 20),
        utc(2026, 3, 30, 0, 40),
        utc(2026, 3, 31, 0, 0),
    ]


def test_remembered_answers_match_a_fresh_computation() -> None:
    """_wall_next reuses its last answer for wall clocks before it: in any order of
    questions, every answer is the one a new croniter gives."""
    import random

    from jobsched.domain.schedule import _croniter, _wall_next

    rng = random.Random(7)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for expr in ("*/7 * * * * *", "0 9 * * 1-5", "30 2 * * *", "0 0 29 2 *"):
        walls = [base + timedelta(seconds=rng.randrange(0, 90 * 86_400)) for _ in range(150)]
        walls += [w + timedelta(microseconds=1) for w in walls[:50]]  # just after
        rng.shuffle(walls)
        for wall in walls:
            fresh = _croniter(expr).get_next(datetime, start_time=wall)
            assert _wall_next(expr, wall) == fresh, (expr, wall)
            assert _wall_next(expr, wall) == fresh, (expr, wall)  # the remembered answer


def test_many_hashed_items_in_the_date_fields_are_validated_by_their_smallest_part() -> None:
    # 868 x 11 combinations: too many to try each, but a day of month among 6-9 exists in
    # every month, so every job fires whatever its other hashed days are.
    assert parse_schedule("0 0 6~9,H,~ 2~ *").needs_seed
    assert parse_schedule("0 0 29~31,H(1-30),H(1-29) H *").needs_seed  # 1-29: in every month
    # Without such a part the question is refused rather than guessed (here some ids do
    # pick 30 and 31 in February).
    with pytest.raises(ScheduleError, match="too many hashed combinations"):
        parse_schedule("0 0 H(1-31),H(1-30) H *")
