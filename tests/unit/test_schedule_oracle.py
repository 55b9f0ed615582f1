"""Property tests: cron fire times against an independent brute-force oracle.

The oracle below shares nothing with ``jobsched.domain.schedule`` (no croniter, no
segment arithmetic): it walks real instants forward one UTC minute at a time, reads the
local wall clock with ``zoneinfo`` and decides with its own small field matcher whether
that instant fires. The daylight-saving rules it encodes are the ones of DESIGN.md
("Defaults that keep it honest", Time) and of the module docstring:

* a *fixed-time* job (no ``*`` or ``/`` in its second, minute or hour field) whose wall
  time falls in a spring-forward gap fires once, at the end of the gap (the transition
  instant); in a fall-back overlap it fires only at the first occurrence (``fold == 0``);
* every other job fires at every real instant whose wall-clock reading matches, so wall
  times in a gap never fire and wall times in an overlap fire in both passes;
* when both day fields are restricted (neither starts with ``*`` or ``?``) a day matching
  either fires (Vixie cron), otherwise both must match.

Offsets only change on whole minutes in the zones used (checked when the transitions are
computed), so within one UTC minute the offset is constant and the 6-field form only has
to enumerate the seconds of a matching minute.

Examples are generated around the real UTC-offset transitions of 2024-2026 of each zone
(within two days of one, many within hours, some exactly on the edges) and the whole file
is deterministic (``derandomize=True``, no example database). The random expressions use
numbers, names, ``*``, ``?``, ranges, steps and lists; they leave out ``L``, ``W`` and
``#`` (explicit cases below), wrap-around ranges (``fri-mon``), ``a/n`` in the day of
week (``a..6`` or ``a..7``? implementations differ) and one-value ranges ``a-a`` (a
croniter bug, collapsed by parse_schedule and pinned by a test at the end).
"""

from __future__ import annotations

import calendar
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import islice

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jobsched.domain.schedule import (
    ScheduleError,
    coalesce_next_fire,
    first_fire_at,
    next_fire_after,
    parse_schedule,
)

# On a failure hypothesis imports libcst (to offer a patch), which trips a deprecation
# warning in mypy_extensions; with filterwarnings=error that would hide the real report.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

ZONES = (
    "Australia/Adelaide",  # +9:30 / +10:30, southern hemisphere
    "Asia/Kolkata",  # +5:30, no DST
    "Asia/Kathmandu",  # +5:45, no DST
    "America/St_Johns",  # -3:30 / -2:30
    "Australia/Lord_Howe",  # +10:30 / +11: a 30-minute shift
    "Pacific/Chatham",  # +12:45 / +13:45, transitions at 2:45 / 3:45 local
    "America/Santiago",  # -4 / -3, transitions at local midnight
    "Europe/Berlin",
    "America/New_York",
    "UTC",
)
YEARS = (2024, 2025, 2026)
#: How far the oracle looks past a query instant. Every generated expression fires on
#: every day its day fields allow, and the day fields are biased toward the start date.
WINDOW_S = 3 * 86_400
#: Fires compared per example (first_fire_at, then chained next_fire_after).
CHAIN = 24

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(dt: datetime) -> int:
    return int((dt - _EPOCH).total_seconds())


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _us(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------- transitions


@dataclass(frozen=True)
class Transition:
    ts: int  # first UTC second with the new offset
    before: timedelta
    after: timedelta

    @property
    def walls(self) -> tuple[datetime, datetime]:
        """The wall-clock span skipped (spring forward) or repeated (fall back)."""
        base = _dt(self.ts).replace(tzinfo=None)
        a, b = base + self.before, base + self.after
        return (a, b) if a < b else (b, a)

    @property
    def hours(self) -> tuple[int, ...]:
        lo, hi = self.walls
        out: list[int] = []
        t = lo
        while t < hi:
            if t.hour not in out:
                out.append(t.hour)
            t += timedelta(minutes=1)
        return tuple(out)


def _offset(zone: zoneinfo.ZoneInfo, ts: int) -> timedelta:
    off = datetime.fromtimestamp(ts, zone).utcoffset()
    assert off is not None
    return off


@cache
def transitions(name: str) -> tuple[Transition, ...]:
    """UTC-offset changes of ``name`` during YEARS: daily probes, then bisection to the
    second."""
    zone = zoneinfo.ZoneInfo(name)
    out: list[Transition] = []
    lo_ts = _ts(datetime(YEARS[0], 1, 1, tzinfo=UTC))
    end = _ts(datetime(YEARS[-1] + 1, 1, 1, tzinfo=UTC))
    off = _offset(zone, lo_ts)
    while lo_ts < end:
        hi_ts = lo_ts + 86_400
        new = _offset(zone, hi_ts)
        if new != off:
            a, b = lo_ts, hi_ts
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(zone, mid) == off:
                    a = mid
                else:
                    b = mid
            assert b % 60 == 0, f"{name} changes offset off a whole minute at {_dt(b)}"
            out.append(Transition(b, off, new))
            off = new
        lo_ts = hi_ts
    return tuple(out)


# --------------------------------------------------------------------------- oracle

MONTH_NAMES = {n.lower(): i for i, n in enumerate(calendar.month_abbr) if n}
DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
BOUNDS = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "dom": (1, 31),
    "month": (1, 12),
    "dow": (0, 7),
}


def _value(text: str, kind: str) -> int:
    names = MONTH_NAMES if kind == "month" else DAY_NAMES if kind == "dow" else {}
    v = names[text.lower()] if text.lower() in names else int(text)
    lo, hi = BOUNDS[kind]
    assert lo <= v <= hi, (text, kind)
    return v


def expand(text: str, kind: str) -> frozenset[int]:
    """The values a plain field allows: ``*``, ``?``, numbers, names, ``a-b``, ``*/n``,
    ``a/n`` (a to the maximum), ``a-b/n`` and lists of those. Day of week 7 is Sunday."""
    lo, hi = BOUNDS[kind]
    out: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = int(step_text) if slash else 1
        assert step >= 1
        if base in ("*", "?"):
            a, b = lo, hi
        elif "-" in base:
            first, last = base.split("-")
            a, b = _value(first, kind), _value(last, kind)
        else:
            a = _value(base, kind)
            b = hi if slash else a
        assert a <= b, item
        out.update(range(a, b + 1, step))
    if kind == "dow":
        out = {0 if v == 7 else v for v in out}
    return frozenset(out)


def _cron_weekday(d: date) -> int:
    return (d.weekday() + 1) % 7  # Sunday = 0


def _last_day(d: date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


def _nearest_weekday(d: date, day: int) -> int:
    """Quartz ``<day>W``: the weekday nearest ``day`` without leaving the month."""
    last = _last_day(d)
    day = min(day, last)
    wd = date(d.year, d.month, day).weekday()  # Monday = 0
    if wd == 5:  # Saturday -> Friday, or Monday the 3rd if the 1st
        return day - 1 if day > 1 else day + 2
    if wd == 6:  # Sunday -> Monday, or Friday if that leaves the month
        return day + 1 if day < last else day - 2
    return day


def _dom_matches(text: str, d: date) -> bool:
    for item in text.split(","):
        if item.upper() == "L":
            if d.day == _last_day(d):
                return True
        elif item.upper().endswith("W"):
            if d.day == _nearest_weekday(d, int(item[:-1])):
                return True
        elif d.day in expand(item, "dom"):
            return True
    return False


def _dow_matches(text: str, d: date) -> bool:
    wd = _cron_weekday(d)
    for item in text.split(","):
        if "#" in item:  # n#k: the k-th such weekday of the month
            day_text, nth = item.split("#")
            if _value(day_text, "dow") % 7 == wd and (d.day - 1) // 7 + 1 == int(nth):
                return True
        elif item.upper().startswith("L"):  # Ln: the last such weekday of the month
            if _value(item[1:], "dow") % 7 == wd and d.day + 7 > _last_day(d):
                return True
        elif wd in expand(item, "dow"):
            return True
    return False


@dataclass(frozen=True)
class OracleCron:
    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    dom: str
    dow: str
    fixed: bool

    @classmethod
    def parse(cls, text: str) -> OracleCron:
        fields = text.split()
        assert len(fields) in (5, 6)
        if len(fields) == 5:
            fields = ["0", *fields]
        sec, minute, hour, dom, month, dow = fields
        return cls(
            text,
            expand(sec, "second"),
            expand(minute, "minute"),
            expand(hour, "hour"),
            expand(month, "month"),
            dom,
            dow,
            fixed=not any(c in f for f in (sec, minute, hour) for c in "*/"),
        )

    @cache  # noqa: B019 - a handful of instances, each kept alive by the test anyway
    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_any = self.dom.startswith(("*", "?"))
        dow_any = self.dow.startswith(("*", "?"))
        dom_ok = _dom_matches(self.dom, d)
        dow_ok = _dow_matches(self.dow, d)
        if dom_any or dow_any:
            return dom_ok and dow_ok
        return dom_ok or dow_ok  # Vixie: both restricted -> either day fires

    def minute_matches(self, wall: datetime) -> bool:
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and self.day_matches(wall.date())
        )


def oracle_fires(
    cron: OracleCron, zone_name: str, after_us: int, *, inclusive: bool, until_s: int
) -> Iterator[int]:
    """Fire instants (UTC epoch seconds) at/after ``after_us`` (epoch microseconds) and
    before ``until_s``, in order, by walking every UTC minute."""
    zone = zoneinfo.ZoneInfo(zone_name)
    minute = after_us // (60 * _US) * 60
    prev_off = _offset(zone, minute - 60)
    seconds = sorted(cron.seconds)
    while minute < until_s:
        local = datetime.fromtimestamp(minute, zone)
        off = local.utcoffset()
        assert off is not None
        wall = local.replace(tzinfo=None)
        found: set[int] = set()
        if cron.minute_matches(wall) and not (cron.fixed and local.fold == 1):
            found.update(minute + s for s in seconds)
        if cron.fixed and off > prev_off:
            # ``minute`` ends a spring-forward gap: wall times [wall - jump, wall) never
            # happened; a fixed-time job due in there fires now, once.
            gap = wall - (off - prev_off)
            while gap < wall:
                if cron.minute_matches(gap):
                    found.add(minute)
                    break
                gap += timedelta(minutes=1)
        for f in sorted(found):
            f_us = f * _US
            if (f_us >= after_us if inclusive else f_us > after_us) and f < until_s:
                yield f
        prev_off = off
        minute += 60


def _walls(cron: OracleCron, local: datetime) -> set[datetime]:
    """The wall times of ``local``'s minute that match ``cron`` by themselves."""
    wall = local.replace(tzinfo=None, second=0)
    if not cron.minute_matches(wall):
        return set()
    return {wall.replace(second=s) for s in cron.seconds}


def oracle_can_fire(cron: OracleCron) -> bool:
    """Whether any date matches: 2000-2027 holds every combination of month length, leap
    year and weekday (the calendar repeats every 28 years between 1901 and 2099)."""
    d, end = date(2000, 1, 1), date(2028, 1, 1)
    while d < end:
        if cron.day_matches(d):
            return True
        d += timedelta(days=1)
    return False


# --------------------------------------------------------------------------- generators


@dataclass(frozen=True)
class Case:
    expr: str
    zone: str
    start: datetime
    lag_s: int  # for coalesce_next_fire: "now" = first fire + lag

    def __repr__(self) -> str:
        local = self.start.astimezone(zoneinfo.ZoneInfo(self.zone))
        return f"Case({self.expr!r}, {self.zone!r}, {self.start.isoformat()} = {local})"


def _name(draw: st.DrawFn, v: int, kind: str) -> str:
    """``v`` as a number or, sometimes, as a name in some letter case (7, the second
    number for Sunday, stays a number so that ranges such as ``5-7`` keep their order)."""
    names = {"month": MONTH_NAMES, "dow": DAY_NAMES}.get(kind, {})
    by_value = {n: k for k, n in names.items()}
    if v in by_value and draw(st.integers(0, 3)) == 0:
        name = by_value[v]
        return draw(st.sampled_from([name, name.upper(), name.title()]))
    return str(v)


@st.composite
def field(draw: st.DrawFn, kind: str, *, prefer: tuple[int, ...] = (), plain: bool = False) -> str:
    """One cron field. ``plain``: numbers, names, ranges and lists only (no ``*``, no
    steps), as a fixed-time job's time fields are. ``prefer``: values worth hitting (the
    hours of a DST transition, the start date's day, weekday and month)."""
    lo, hi = BOUNDS[kind]
    if kind == "dow":
        hi = 7

    def value() -> int:
        if prefer and draw(st.integers(0, 2)) > 0:
            return draw(st.sampled_from(prefer))
        return draw(st.integers(lo, hi))

    if not plain:
        shape = draw(st.sampled_from(["*", "*", "*/n", "list"]))
        if shape == "*":
            return "?" if kind in ("dom", "dow") and draw(st.booleans()) else "*"
        if shape == "*/n":
            return f"*/{draw(st.integers(1, hi - lo + 1))}"
    items: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kinds = ["value", "range"] if plain else ["value", "range", "range/n", "a/n"]
        if kind == "dow":  # 'a/n' means a..6 to croniter but a..7 to Vixie: left out
            kinds = [k for k in kinds if k != "a/n"]
        item = draw(st.sampled_from(kinds))
        a = value()
        if item == "value":
            items.append(_name(draw, a, kind))
        elif item == "a/n":
            items.append(f"{a}/{draw(st.integers(1, hi - lo + 1))}")
        elif a == hi:  # a one-value range 'a-a' hits a croniter bug, pinned below
            items.append(_name(draw, a, kind))
        else:
            b = draw(st.integers(a + 1, hi))
            text = f"{_name(draw, a, kind)}-{_name(draw, b, kind)}"
            if item == "range/n":
                text += f"/{draw(st.integers(1, hi - lo + 1))}"
            items.append(text)
    return ",".join(items)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    zone_name = draw(st.sampled_from(ZONES))
    zone = zoneinfo.ZoneInfo(zone_name)
    found = transitions(zone_name)
    hours: tuple[int, ...] = ()
    minutes: tuple[int, ...] = (0, 15, 30, 45, 59)
    # A third of the zones-with-DST examples aim a fixed-time job at the span a transition
    # skips or repeats, from up to a day before it: the cases the DST rules are about.
    focus = bool(found) and draw(st.integers(0, 2)) == 0
    if found:
        t = draw(st.sampled_from(found))
        jump = int(abs((t.after - t.before).total_seconds()))
        lo, hi = t.walls
        mid = lo + (hi - lo) / 2
        minutes = (lo.minute, mid.minute, (hi - timedelta(minutes=1)).minute)
        delta = draw(
            st.integers(-86_400, 0)
            if focus
            else st.one_of(
                st.integers(-2 * 86_400, 2 * 86_400),
                st.integers(-3 * 3600, 3 * 3600),
                st.integers(-jump - 900, 60),  # just before the skipped/repeated span
                st.sampled_from([0, -1, 1, -60, 60, -jump, jump, jump - 1, -jump - 1]),
            )
        )
        start_s = t.ts + delta
        hours = t.hours
    else:
        year = draw(st.sampled_from(YEARS))
        start_s = draw(
            st.integers(
                _ts(datetime(year, 1, 1, tzinfo=UTC)), _ts(datetime(year, 12, 28, tzinfo=UTC))
            )
        )
    micro = draw(st.sampled_from([0, 0, 0, 1, 500_000, 999_999]))
    start = _dt(start_s) + timedelta(microseconds=micro)
    local = start.astimezone(zone)
    days = [local.date() + timedelta(days=i) for i in range(3)]

    fixed = focus or draw(st.booleans())
    hour_prefer = hours or tuple(h.hour for h in (local, local + timedelta(hours=1)))
    minute = draw(field("minute", prefer=(*minutes, local.minute), plain=fixed))
    hour = draw(field("hour", prefer=hour_prefer, plain=fixed))
    dom = draw(field("dom", prefer=tuple(d.day for d in days)))
    month = (
        "*" if draw(st.booleans()) else draw(field("month", prefer=tuple(d.month for d in days)))
    )
    dow = draw(field("dow", prefer=tuple(_cron_weekday(d) for d in days)))
    fields = [minute, hour, dom, month, dow]
    if draw(st.booleans()):
        fields.insert(0, draw(field("second", prefer=(0, 30, 59), plain=fixed)))
    lag = draw(st.sampled_from([0, 1, 59, 3600, 86_400]))
    return Case(" ".join(fields), zone_name, start, lag)


# --------------------------------------------------------------------------- checks


def _show(fires: list[datetime], zone: str) -> list[str]:
    z = zoneinfo.ZoneInfo(zone)
    return [f"{f:%Y-%m-%dT%H:%M:%S}Z={f.astimezone(z):%H:%M:%S%z}" for f in fires]


def check_against_oracle(
    expr: str, zone: str, start: datetime, *, window_s: int, lag_s: int = 0, chain: int = CHAIN
) -> list[datetime]:
    """first_fire_at(start) and the next_fire_after chain from it equal the oracle's fires
    in [start, start + window); the one after them lies beyond the window. Also checks
    next_fire_after(start) and coalesce_next_fire(first, first + lag). Returns the fires."""
    schedule = parse_schedule(expr, zone)
    cron = OracleCron.parse(expr)
    start_us = _us(start)
    until = start_us // _US + window_s
    horizon = _dt(until)

    expected = [
        _dt(f)
        for f in islice(oracle_fires(cron, zone, start_us, inclusive=True, until_s=until), chain)
    ]
    got: list[datetime] = []
    nxt = first_fire_at(schedule, start)
    while nxt is not None and nxt < horizon and len(got) < chain:
        got.append(nxt)
        nxt = next_fire_after(schedule, nxt)
    assert got == expected, (
        f"{expr!r} in {zone} from {start}:\n"
        f"expected {_show(expected, zone)}\ngot      {_show(got, zone)}"
    )

    after = next(oracle_fires(cron, zone, start_us, inclusive=False, until_s=until), None)
    got_after = next_fire_after(schedule, start)
    if after is None:
        assert got_after is None or got_after >= horizon
    else:
        assert got_after == _dt(after)

    if expected:
        first = expected[0]
        now = first + timedelta(seconds=lag_s)
        want = next(
            oracle_fires(cron, zone, _us(now), inclusive=False, until_s=_ts(now) + window_s),
            None,
        )
        got_c = coalesce_next_fire(schedule, first, now)
        if want is None:
            assert got_c is None or got_c >= now + timedelta(seconds=window_s)
        else:
            assert got_c == _dt(want)
    return expected


@settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=cases())
def test_fire_times_match_brute_force_oracle(case: Case) -> None:
    cron = OracleCron.parse(case.expr)
    event(f"{'6' if case.expr.count(' ') == 5 else '5'}-field")
    event("fixed-time" if cron.fixed else "elapsed-time")
    try:
        parse_schedule(case.expr, case.zone)
    except ScheduleError as exc:
        # Refused: only acceptable when no date at all can match.
        event("refused: can never fire")
        assert not oracle_can_fire(cron), f"{case.expr!r} refused ({exc}) but can fire"
        return
    fires = check_against_oracle(
        case.expr, case.zone, case.start, window_s=WINDOW_S, lag_s=case.lag_s
    )
    if not fires:
        # Accepted, so it must be able to fire some day, just not in this window.
        event("oracle: no fire in window")
        assert oracle_can_fire(cron), f"{case.expr!r} can never fire but was accepted"
    zone = zoneinfo.ZoneInfo(case.zone)
    edges = {t.ts for t in transitions(case.zone)}
    kind = "fixed-time" if cron.fixed else "elapsed-time"
    for f in fires:
        local = f.astimezone(zone)
        if _ts(f) in edges and local.replace(tzinfo=None) not in _walls(cron, local):
            event(f"{kind}: fire at the end of a spring-forward gap for a wall time inside it")
        if local.fold == 1:
            event(f"{kind}: fire in the second pass of a fall-back overlap")
        elif local.replace(fold=1).utcoffset() != local.utcoffset():
            event(f"{kind}: fire in the first pass of a fall-back overlap")


# --------------------------------------------------------------------------- the oracle itself


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _oracle(expr: str, zone: str, start: datetime, n: int) -> list[datetime]:
    it = oracle_fires(
        OracleCron.parse(expr), zone, _us(start), inclusive=True, until_s=_ts(start) + 40 * 86_400
    )
    return [_dt(f) for f in islice(it, n)]


@pytest.mark.parametrize(
    ("expr", "zone", "start", "want"),
    [
        # Berlin 2025: 02:00 CET -> 03:00 CEST at 2025-03-30 01:00Z.
        (
            "30 2 * * *",
            "Europe/Berlin",
            utc(2025, 3, 29, 12),
            [utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30)],
        ),
        (
            "*/30 2 * * *",
            "Europe/Berlin",
            utc(2025, 3, 29, 12),
            [utc(2025, 3, 31, 0), utc(2025, 3, 31, 0, 30)],
        ),
        # Berlin 2025: 03:00 CEST -> 02:00 CET at 2025-10-26 01:00Z.
        (
            "30 2 * * *",
            "Europe/Berlin",
            utc(2025, 10, 25, 12),
            [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)],
        ),
        (
            "*/30 2 * * *",
            "Europe/Berlin",
            utc(2025, 10, 25, 12),
            [
                utc(2025, 10, 26, 0),
                utc(2025, 10, 26, 0, 30),
                utc(2025, 10, 26, 1),
                utc(2025, 10, 26, 1, 30),
                utc(2025, 10, 27, 1),
            ],
        ),
        # Lord Howe 2025: 02:00 +10:30 -> 02:30 +11 at 2025-10-04 15:30Z (a 30-min gap).
        ("15 2 * * *", "Australia/Lord_Howe", utc(2025, 10, 4), [utc(2025, 10, 4, 15, 30)]),
        # Santiago 2025: 00:00 -04 -> 01:00 -03 at 2025-09-07 04:00Z (gap at midnight).
        (
            "30 0 * * *",
            "America/Santiago",
            utc(2025, 9, 6, 12),
            [utc(2025, 9, 7, 4), utc(2025, 9, 8, 3, 30)],
        ),
        # Vixie OR: the 1st of the month or a Monday; '*'-led day field -> AND.
        (
            "0 12 1 * mon",
            "UTC",
            utc(2026, 1, 1),
            [utc(2026, 1, 1, 12), utc(2026, 1, 5, 12), utc(2026, 1, 12, 12)],
        ),
        ("0 12 */1 * mon", "UTC", utc(2026, 1, 1), [utc(2026, 1, 5, 12)]),
        ("0 12 ? * 7", "UTC", utc(2026, 1, 1), [utc(2026, 1, 4, 12)]),
    ],
)
def test_oracle_agrees_with_hand_computed_times(
    expr: str, zone: str, start: datetime, want: list[datetime]
) -> None:
    """The oracle is only worth trusting if it gets the documented examples right."""
    assert _oracle(expr, zone, start, len(want)) == want


# --------------------------------------------------------------------------- L, W, #


@pytest.mark.parametrize(
    ("expr", "zone", "start"),
    [
        # L on Berlin's 2024 spring-forward day (Sunday 31 March): 02:30 does not exist.
        ("30 2 L * *", "Europe/Berlin", utc(2024, 3, 1)),
        ("*/20 2 L * *", "Europe/Berlin", utc(2024, 3, 1)),
        # '#' on Adelaide's fall-back day (first Sunday of April, 03:00 -> 02:00).
        ("30 2 * * sun#1", "Australia/Adelaide", utc(2025, 3, 20)),
        ("0 */20 2 * * 0#1", "Australia/Adelaide", utc(2025, 3, 20)),
        # Last Sunday (L0): New York's fall-back is the first Sunday of November, so
        # cover Chatham's spring-forward (last Sunday of September, 02:45 -> 03:45).
        ("0 3 * * L0", "Pacific/Chatham", utc(2025, 9, 1)),
        ("15 2 * 9,10 L0", "Pacific/Chatham", utc(2024, 9, 1)),
        # W: the nearest weekday, across month starts and weekends.
        ("0 9 1W * *", "America/New_York", utc(2025, 10, 20)),  # 2025-11-01 is a Saturday
        ("30 1 15W * *", "America/St_Johns", utc(2026, 2, 1)),  # 2026-03-15 is a Sunday
        ("0 0 0 L * *", "America/Santiago", utc(2025, 8, 1)),
        ("0 23 * * fri#2", "Asia/Kathmandu", utc(2025, 5, 1)),
    ],
)
def test_last_weekday_and_nth_forms_match_oracle(expr: str, zone: str, start: datetime) -> None:
    fires = check_against_oracle(expr, zone, start, window_s=70 * 86_400, chain=4)
    assert fires, "the explicit cases are chosen to fire within the window"


# ------------------------------------------------------- croniter quirks, handled


def _first_fires(expr: str, start: datetime, n: int) -> list[datetime]:
    schedule = parse_schedule(expr, "UTC")
    out: list[datetime] = []
    nxt = first_fire_at(schedule, start)
    while nxt is not None and len(out) < n:
        out.append(nxt)
        nxt = next_fire_after(schedule, nxt)
    return out


@pytest.mark.parametrize(
    "expr",
    [
        "0 9-9 * * *",
        "5-5 * * * *",
        "5-5,30 * * * *",
        "0 0 3-3 * *",
        "0 0 * mar-mar *",
        "0 0 * * tue-tue",
        "16-16 * * * * *",
    ],
)
def test_one_value_range_means_that_value(expr: str) -> None:
    # croniter widens 'a-a' to the whole field; parse_schedule collapses it to 'a'.
    start = utc(2026, 1, 1)
    single = re.sub(r"\b(\w+)-\1\b", r"\1", expr, flags=re.IGNORECASE)
    assert single != expr
    assert _first_fires(expr, start, 3) == _first_fires(single, start, 3)


@pytest.mark.parametrize(
    "expr", ["0 0 1 * 0#1", "0 0 1,15 * sun#1", "0 0 15W * mon", "0 0 1 * L0", "0 0 1 * fri#2"]
)
def test_day_forms_croniter_cannot_or_are_refused(expr: str) -> None:
    # croniter intersects the day fields when one uses '#', 'L<n>' or 'W', where Vixie
    # cron ORs them: rather than fire on the wrong days, such expressions are refused.
    with pytest.raises(ScheduleError, match="neither may use 'W', '#' or 'L'"):
        parse_schedule(expr, "UTC")
