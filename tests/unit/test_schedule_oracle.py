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
import hashlib
import itertools
import math
import os
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
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
#: Examples per property test; JOBSCHED_ORACLE_EXAMPLES raises both for a long local run.
EXAMPLES = int(os.environ.get("JOBSCHED_ORACLE_EXAMPLES", "600"))
DIALECT_EXAMPLES = int(os.environ.get("JOBSCHED_ORACLE_EXAMPLES", "300"))

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
    "year": (1970, 2099),
}
#: (first value, length) of the cycle a wrapping range ("22-2", "fri-mon") runs around.
CYCLES = {"second": (0, 60), "minute": (0, 60), "hour": (0, 24), "dom": (1, 31),
          "month": (1, 12), "dow": (0, 7)}
#: docs/scheduling.md: a bare H ranges over these (Jenkins: days 1-28, weekdays 0-6).
H_BOUNDS = {**BOUNDS, "dom": (1, 28), "dow": (0, 6)}
#: The field names the documented hash is keyed on.
FIELD_NAMES = {
    "second": "second",
    "minute": "minute",
    "hour": "hour",
    "dom": "day-of-month",
    "month": "month",
    "dow": "day-of-week",
}
DATE_KINDS = ("dom", "month", "dow")
_H_ITEM = re.compile(r"[Hh](?:\((\d+)-(\d+)\))?(?:/(\d+))?")
_TILDE_ITEM = re.compile(r"(\d*)~(\d*)")


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
        if a <= b:
            out.update(range(a, b + 1, step))
        else:  # Quartz: the range wraps past the end of the cycle, the step runs on
            first, size = CYCLES[kind]
            out.update((v - first) % size + first for v in range(a, b + size + 1, step))
    if kind == "dow":
        out = {0 if v == 7 else v for v in out}
    return frozenset(out)


# ----------------------------------------------------------- hashed values (Jenkins, cronie)


def oracle_hash(seed: bytes, kind: str) -> int:
    """The documented per-job number of one field: the first 8 bytes (big-endian) of
    SHA-256 over b"jobsched cron H", NUL, the seed, NUL, the field's name."""
    digest = hashlib.sha256(b"jobsched cron H\0" + seed + b"\0" + FIELD_NAMES[kind].encode())
    return int.from_bytes(digest.digest()[:8], "big")


@dataclass(frozen=True)
class HashedItem:
    candidates: tuple[int, ...]  # in order; the hours of H(22-2) wrap past midnight
    step: int  # 1: one value, candidates[h % len]; n: candidates[h % n :: n]

    @classmethod
    def parse(cls, item: str, kind: str) -> HashedItem | None:
        if m := _H_ITEM.fullmatch(item):
            a, b = (int(m[1]), int(m[2])) if m[1] else H_BOUNDS[kind]
            step = int(m[3]) if m[3] else 1
        elif m := _TILDE_ITEM.fullmatch(item):
            lo, hi = H_BOUNDS[kind] if kind == "dow" else BOUNDS[kind]
            a, b = int(m[1]) if m[1] else lo, int(m[2]) if m[2] else hi
            step = 1
        else:
            return None
        if a <= b:
            candidates = tuple(range(a, b + 1))
        else:
            assert kind == "hour", item
            candidates = (*range(a, 24), *range(0, b + 1))
        return cls(candidates, step)

    @property
    def period(self) -> int:
        """How many different picks there are (the pick is the hash modulo this)."""
        return len(self.candidates) if self.step == 1 else self.step

    def pick(self, h: int) -> tuple[int, ...]:
        if self.step == 1:
            return (self.candidates[h % len(self.candidates)],)
        return self.candidates[h % self.step :: self.step]


def resolve(text: str, kind: str, h: int) -> str:
    """``text`` with each hashed item replaced by the values the number ``h`` picks."""
    items = []
    for item in text.split(","):
        hashed = HashedItem.parse(item, kind)
        items.append(item if hashed is None else ",".join(map(str, hashed.pick(h))))
    return ",".join(items)


def _periodic(text: str, kind: str) -> bool:
    """Whether a time field is a wildcard or a step (not fixed-time): H and a~b count as
    values, H/n (n > 1) as a step."""
    for item in text.split(","):
        hashed = HashedItem.parse(item, kind)
        if hashed is not None:
            if hashed.step > 1:
                return True
        elif "*" in item or "/" in item:
            return True
    return False


# ----------------------------------------------------------- day forms (Quartz, Vixie)


def _cron_weekday(d: date) -> int:
    return (d.weekday() + 1) % 7  # Sunday = 0


def _last_day(d: date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


def _nearest_weekday(d: date, day: int) -> int | None:
    """Quartz ``<day>W``: the weekday nearest ``day`` without leaving the month; a month
    without that day has none (``30W`` in February never fires)."""
    last = _last_day(d)
    if not 1 <= day <= last:
        return None
    wd = date(d.year, d.month, day).weekday()  # Monday = 0
    if wd == 5:  # Saturday -> Friday, or Monday the 3rd if the 1st
        return day - 1 if day > 1 else day + 2
    if wd == 6:  # Sunday -> Monday, or Friday if that leaves the month
        return day + 1 if day < last else day - 2
    return day


def _weekdays(text: str) -> frozenset[int]:
    """A weekday, name or range of them (the part before '#' or around 'L')."""
    return expand(text, "dow")


def _dom_matches(text: str, d: date) -> bool:
    last = _last_day(d)
    for item in text.split(","):
        upper = item.upper()
        if upper.startswith("L") and not upper.startswith("L-") and upper not in ("L", "LW"):
            raise AssertionError(item)
        if upper.startswith("L"):  # L, L-n, LW, L-nW
            body = upper[1:]
            weekday = body.endswith("W")
            offset = int(body.rstrip("W")[1:] or 0) if body.startswith("-") else 0
            target = last - offset
            if weekday:
                target = _nearest_weekday(d, target) if target >= 1 else None
            if d.day == target:
                return True
        elif upper.endswith("W") or upper.startswith("W"):
            if d.day == _nearest_weekday(d, int(upper.strip("W"))):
                return True
        elif d.day in expand(item, "dom"):
            return True
    return False


def _dow_matches(text: str, d: date) -> bool:
    wd = _cron_weekday(d)
    for item in text.split(","):
        upper = item.upper()
        if upper == "L":  # Quartz: the last day of the week, Saturday
            if wd == 6:
                return True
        elif "#" in item:  # d#k: the k-th such weekday of the month
            day_text, nth = item.split("#")
            if wd in _weekdays(day_text) and (d.day - 1) // 7 + 1 == int(nth):
                return True
        elif upper.startswith("L") or upper.endswith("L"):  # Ld, dL: the last such weekday
            day_text = item[1:] if upper.startswith("L") else item[:-1]
            if wd in _weekdays(day_text) and d.day + 7 > _last_day(d):
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
    years: frozenset[int] | None
    dom: str
    dow: str
    fixed: bool
    _days: dict[date, bool] = dataclass_field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(
        cls, text: str, seed: bytes | None = None, *, hashes: dict[str, int] | None = None
    ) -> OracleCron:
        """``seed`` picks the hashed values; ``hashes`` (kind -> number) overrides it."""
        fields = text.split()
        assert len(fields) in (5, 6, 7)
        if len(fields) == 5:
            fields = ["0", *fields]
        sec, minute, hour, dom, month, dow, *year = fields
        fixed = not any(
            _periodic(f, kind) for f, kind in ((sec, "second"), (minute, "minute"), (hour, "hour"))
        )

        def field(f: str, kind: str) -> str:
            if hashes is not None and kind in hashes:
                return resolve(f, kind, hashes[kind])
            if seed is not None:
                return resolve(f, kind, oracle_hash(seed, kind))
            assert all(HashedItem.parse(i, kind) is None for i in f.split(",")), (f, "no seed")
            return f

        return cls(
            text,
            expand(field(sec, "second"), "second"),
            expand(field(minute, "minute"), "minute"),
            expand(field(hour, "hour"), "hour"),
            expand(field(month, "month"), "month"),
            expand(year[0], "year") if year and year[0] != "*" else None,
            "*" if dom == "?" else field(dom, "dom"),
            "*" if dow == "?" else field(dow, "dow"),
            fixed=fixed,
        )

    def day_matches(self, d: date) -> bool:
        known = self._days.get(d)
        if known is None:
            known = self._days[d] = self._day_matches(d)
        return known

    def _day_matches(self, d: date) -> bool:
        if d.month not in self.months or (self.years is not None and d.year not in self.years):
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
    before ``until_s``, in order, by walking the UTC minutes (skipping those whose wall
    clock cannot match, never across a change of UTC offset)."""
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
        step = _minutes_to_candidate(cron, wall)
        # Wall minutes are real minutes only while the offset stays: never jump over a
        # change (offsets change at most once in a few days), walk up to it instead.
        while step > 1 and _offset(zone, minute + step * 60) != off:
            step = 1 if step <= 60 else 60
        minute += step * 60


def _minutes_to_candidate(cron: OracleCron, wall: datetime) -> int:
    """Wall minutes from ``wall`` to the next one that could match (at least 1)."""
    nxt = wall + timedelta(minutes=1)
    if not cron.day_matches(nxt.date()):
        target = datetime.combine(nxt.date() + timedelta(days=1), datetime.min.time())
    elif nxt.hour not in cron.hours:
        target = nxt.replace(minute=0) + timedelta(hours=1)
    else:
        later = [m for m in cron.minutes if m >= nxt.minute]
        target = (
            nxt.replace(minute=min(later)) if later
            else nxt.replace(minute=0) + timedelta(hours=1)
        )
    return max(1, int((target - wall) / timedelta(minutes=1)))


def _walls(cron: OracleCron, local: datetime) -> set[datetime]:
    """The wall times of ``local``'s minute that match ``cron`` by themselves."""
    wall = local.replace(tzinfo=None, second=0)
    if not cron.minute_matches(wall):
        return set()
    return {wall.replace(second=s) for s in cron.seconds}


def oracle_can_fire(cron: OracleCron) -> bool:
    """Whether any date matches: 2000-2027 holds every combination of month length, leap
    year and weekday (the calendar repeats every 28 years between 1901 and 2099); a year
    field names its own years."""
    years = sorted(cron.years) if cron.years is not None else range(2000, 2028)
    for year in years:
        d, end = date(year, 1, 1), date(year + 1, 1, 1)
        while d < end:
            if cron.day_matches(d):
                return True
            d += timedelta(days=1)
    return False


def oracle_fires_for_every_seed(text: str) -> bool:
    """Whether every job can fire, whatever numbers its id gives the hashed values of the
    date fields (the time fields only move the time of day)."""
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    kinds = ("second", "minute", "hour", "dom", "month", "dow")
    options: dict[str, range] = {}
    for f, kind in zip(fields, kinds, strict=False):
        hashed = [h for i in f.split(",") if (h := HashedItem.parse(i, kind)) is not None]
        if hashed and kind in DATE_KINDS:
            options[kind] = range(math.lcm(*(h.period for h in hashed)))
    for numbers in itertools.product(*options.values()):
        hashes = dict.fromkeys(kinds, 0) | dict(zip(options, numbers, strict=True))
        if not oracle_can_fire(OracleCron.parse(text, hashes=hashes)):
            return False
    return True


# --------------------------------------------------------------------------- generators


@dataclass(frozen=True)
class Case:
    expr: str
    zone: str
    start: datetime
    lag_s: int  # for coalesce_next_fire: "now" = first fire + lag
    seed: bytes | None = None  # picks the hashed values

    def __repr__(self) -> str:
        local = self.start.astimezone(zoneinfo.ZoneInfo(self.zone))
        seed = "" if self.seed is None else f", seed={self.seed!r}"
        return (
            f"Case({self.expr!r}, {self.zone!r}, {self.start.isoformat()} = {local}{seed})"
        )


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


@dataclass(frozen=True)
class Moment:
    """Where an example starts, and the values worth aiming at from there."""

    zone: str
    start: datetime
    local: datetime
    hours: tuple[int, ...]  # of a nearby DST transition's skipped or repeated span
    minutes: tuple[int, ...]
    focus: bool  # aim a fixed-time job at that span

    @property
    def days(self) -> list[date]:
        return [self.local.date() + timedelta(days=i) for i in range(3)]

    @property
    def hour_prefer(self) -> tuple[int, ...]:
        return self.hours or tuple(h.hour for h in (self.local, self.local + timedelta(hours=1)))


@st.composite
def moments(draw: st.DrawFn) -> Moment:
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
    return Moment(zone_name, start, start.astimezone(zone), hours, minutes, focus)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    at = draw(moments())
    days = at.days
    fixed = at.focus or draw(st.booleans())
    minute = draw(field("minute", prefer=(*at.minutes, at.local.minute), plain=fixed))
    hour = draw(field("hour", prefer=at.hour_prefer, plain=fixed))
    dom = draw(field("dom", prefer=tuple(d.day for d in days)))
    month = (
        "*" if draw(st.booleans()) else draw(field("month", prefer=tuple(d.month for d in days)))
    )
    dow = draw(field("dow", prefer=tuple(_cron_weekday(d) for d in days)))
    fields = [minute, hour, dom, month, dow]
    if draw(st.booleans()):
        fields.insert(0, draw(field("second", prefer=(0, 30, 59), plain=fixed)))
    lag = draw(st.sampled_from([0, 1, 59, 3600, 86_400]))
    return Case(" ".join(fields), at.zone, at.start, lag)


# ------------------------------------------------------- generators: the dialects' forms


@st.composite
def hashed_item(draw: st.DrawFn, kind: str, *, prefer: tuple[int, ...], periodic: bool) -> str:
    """Jenkins' H forms and cronie's a~b, aimed at ``prefer`` (a narrow range around one
    of them picks it often, whatever the seed)."""
    lo, hi = H_BOUNDS[kind]
    v = draw(st.sampled_from(prefer)) if prefer else draw(st.integers(lo, hi))
    a = max(BOUNDS[kind][0], v - draw(st.integers(0, 2)))
    b = min(BOUNDS[kind][1], v + draw(st.integers(0, 2)))
    shapes = ["H", "H(a-b)", "a~b", "~", "a~", "H/1"]
    if periodic:
        shapes += ["H/n", "H(a-b)/n"]
    if kind == "hour":
        shapes.append("wrap")
    shape = draw(st.sampled_from(shapes))
    if shape == "H":
        return draw(st.sampled_from(["H", "h"]))
    if shape == "H/1":
        return "H/1"
    if shape == "H(a-b)":
        return f"H({a}-{b})"
    if shape == "a~b":
        return f"{a}~{b}"
    if shape == "~":
        return "~"
    if shape == "a~":
        return f"{a}~" if draw(st.booleans()) else f"~{b}"
    if shape == "wrap":  # Jenkins: H(22-2) wraps past midnight
        return f"H({draw(st.integers(20, 23))}-{draw(st.integers(0, 3))})"
    if shape == "H/n":
        return f"H/{draw(st.integers(2, hi - lo + 1))}"
    wide_a = max(lo, v - draw(st.integers(0, 20)))
    wide_b = min(hi, v + draw(st.integers(0, 20)))
    return f"H({wide_a}-{wide_b})/{draw(st.integers(1, wide_b - wide_a + 1))}"


@st.composite
def wrapped_range(draw: st.DrawFn, kind: str, *, prefer: tuple[int, ...], step: bool) -> str:
    """Quartz's overflowing range, e.g. hours 22-2 or NOV-FEB, through a preferred value."""
    first, size = CYCLES[kind]
    v = draw(st.sampled_from(prefer))
    a = draw(st.integers(max(first + 1, v - size // 2), first + size - 1)) if v > first + 1 \
        else first + size - 1
    b = draw(st.integers(first, a - 1))
    text = f"{_name(draw, a, kind)}-{_name(draw, b, kind)}"
    return text + (f"/{draw(st.integers(1, size // 2))}" if step else "")


@st.composite
def time_field(draw: st.DrawFn, kind: str, *, prefer: tuple[int, ...], fixed: bool) -> str:
    if draw(st.integers(0, 5)) == 0:
        return draw(wrapped_range(kind, prefer=prefer, step=not fixed))
    if draw(st.booleans()):
        return draw(field(kind, prefer=prefer, plain=fixed))
    items = [draw(hashed_item(kind, prefer=prefer, periodic=not fixed))]
    if draw(st.integers(0, 3)) == 0:
        items.append(str(draw(st.sampled_from(prefer))))
    return ",".join(items)


@st.composite
def dom_item(draw: st.DrawFn, days: list[date]) -> str:
    d = draw(st.sampled_from(days))
    to_last = _last_day(d) - d.day
    shape = draw(st.sampled_from(["plain", "L", "L-n", "LW", "L-nW", "nW", "nW", "H"]))
    if shape == "plain":
        if draw(st.integers(0, 4)) == 0:
            return draw(wrapped_range("dom", prefer=(d.day,), step=draw(st.booleans())))
        return draw(field("dom", prefer=(d.day,), plain=True))
    if shape == "L":
        return "L"
    if shape == "LW":
        return "LW"
    if shape in ("L-n", "L-nW"):
        n = draw(st.one_of(st.integers(max(0, to_last - 2), min(30, to_last + 2)),
                           st.integers(0, 30)))
        return f"L-{n}" + ("W" if shape == "L-nW" else "")
    if shape == "nW":
        n = draw(st.one_of(st.integers(max(1, d.day - 2), min(31, d.day + 2)),
                           st.integers(28, 31), st.integers(1, 3)))
        return f"W{n}" if draw(st.integers(0, 5)) == 0 else f"{n}W"
    return draw(hashed_item("dom", prefer=(d.day,), periodic=False))


@st.composite
def dow_item(draw: st.DrawFn, days: list[date]) -> str:
    d = draw(st.sampled_from(days))
    wd = _cron_weekday(d)
    shape = draw(st.sampled_from(["plain", "#", "#", "#range", "dL", "Ld", "L", "H"]))
    if shape == "plain":
        if draw(st.integers(0, 4)) == 0:
            return draw(wrapped_range("dow", prefer=(wd,), step=draw(st.booleans())))
        return draw(field("dow", prefer=(wd,), plain=True))
    if shape == "L":
        return "L"
    if shape == "H":
        return draw(hashed_item("dow", prefer=(wd,), periodic=False))
    day = _name(draw, wd, "dow")
    if shape == "#":
        nth = draw(st.one_of(st.just((d.day - 1) // 7 + 1), st.integers(1, 5)))
        return f"{day}#{nth}"
    if shape == "#range":
        a = draw(st.integers(0, wd))
        return f"{a}-{draw(st.integers(max(a, wd), 6))}#{(d.day - 1) // 7 + 1}"
    return f"{day}L" if shape == "dL" else f"L{day}"


@st.composite
def day_field(draw: st.DrawFn, item: Callable[..., st.SearchStrategy[str]], kind: str,
              days: list[date]) -> str:
    """A day field of 1-3 items, a quarter of them '*' or '?' (so the other field is
    ANDed rather than ORed with it)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(["*", "?", "*/2"]))
    items = [draw(item(days)) for _ in range(draw(st.integers(1, 3)))]
    # One hashed item per date field at most: the oracle tries every value a job's id can
    # give them, and several items multiply those (the implementation's shortcut for that
    # case has a unit test of its own).
    hashed = [i for i, text in enumerate(items) if HashedItem.parse(text, kind) is not None]
    return ",".join(text for i, text in enumerate(items) if i not in hashed[1:])


@st.composite
def dialect_cases(draw: st.DrawFn) -> Case:
    """Expressions with the forms Quartz, Jenkins and cronie add to Vixie cron: L, W, #
    and hashed values in any combination, a year field, and a seed."""
    at = draw(moments())
    days = at.days
    fixed = at.focus or draw(st.booleans())
    minute = draw(time_field("minute", prefer=(*at.minutes, at.local.minute), fixed=fixed))
    hour = draw(time_field("hour", prefer=at.hour_prefer, fixed=fixed))
    dom = draw(day_field(dom_item, "dom", days))
    dow = draw(day_field(dow_item, "dow", days))
    months = tuple(d.month for d in days)
    dom_hashed = any(HashedItem.parse(i, "dom") is not None for i in dom.split(","))
    month = draw(st.sampled_from(["*", "*", "field"] if dom_hashed else ["*", "*", "field", "H"]))
    if month == "field":
        month = draw(st.one_of(field("month", prefer=months),
                               wrapped_range("month", prefer=months, step=draw(st.booleans()))))
    elif month == "H":
        month = draw(hashed_item("month", prefer=months, periodic=False))
    fields = [minute, hour, dom, month, dow]
    if at.focus or draw(st.booleans()):
        fields.insert(0, draw(time_field("second", prefer=(0, 30, 59), fixed=fixed)))
        if draw(st.integers(0, 3)) == 0:  # Quartz's year field
            y = at.local.year
            fields.append(draw(st.sampled_from(
                ["*", str(y), f"{y}-{y + 2}", f"{y - 1},{y}", str(y + 1), f"{y - 2}-2099/2"])))
    seed = draw(st.binary(max_size=16))
    lag = draw(st.sampled_from([0, 1, 59, 3600, 86_400]))
    return Case(" ".join(fields), at.zone, at.start, lag, seed)


# --------------------------------------------------------------------------- checks


def _show(fires: list[datetime], zone: str) -> list[str]:
    z = zoneinfo.ZoneInfo(zone)
    return [f"{f:%Y-%m-%dT%H:%M:%S}Z={f.astimezone(z):%H:%M:%S%z}" for f in fires]


def check_against_oracle(
    expr: str,
    zone: str,
    start: datetime,
    *,
    window_s: int,
    lag_s: int = 0,
    chain: int = CHAIN,
    seed: bytes | None = None,
) -> list[datetime]:
    """first_fire_at(start) and the next_fire_after chain from it equal the oracle's fires
    in [start, start + window); the one after them lies beyond the window. Also checks
    next_fire_after(start) and coalesce_next_fire(first, first + lag). Returns the fires."""
    schedule = parse_schedule(expr, zone, seed)
    cron = OracleCron.parse(expr, seed)
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
    max_examples=EXAMPLES,
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


@settings(
    max_examples=DIALECT_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=dialect_cases())
def test_dialect_forms_match_brute_force_oracle(case: Case) -> None:
    """Quartz's L, W, # and year, Jenkins' H and cronie's ~, in lists, in both day fields
    at once (Vixie's OR), around DST transitions, for a random job seed."""
    cron = OracleCron.parse(case.expr, case.seed)
    event(f"{len(case.expr.split())}-field")
    event("fixed-time" if cron.fixed else "elapsed-time")
    event("days: either field (OR)" if not (cron.dom.startswith("*") or cron.dow.startswith("*"))
          else "days: both fields (AND)")
    try:
        parse_schedule(case.expr, case.zone, case.seed)
    except ScheduleError as exc:
        # Refused: only acceptable when some job (some seed) could never fire.
        event("refused: some job could never fire")
        assert not oracle_fires_for_every_seed(case.expr), (
            f"{case.expr!r} refused ({exc}) but every job can fire"
        )
        return
    assert oracle_fires_for_every_seed(case.expr), f"{case.expr!r} accepted but cannot fire"
    fires = check_against_oracle(
        case.expr, case.zone, case.start, window_s=WINDOW_S, lag_s=case.lag_s, seed=case.seed
    )
    event("fires in window" if fires else "oracle: no fire in window")
    zone = zoneinfo.ZoneInfo(case.zone)
    for f in fires:
        local = f.astimezone(zone)
        if local.fold == 1:
            event("fire in the second pass of a fall-back overlap")
        if _ts(f) in {t.ts for t in transitions(case.zone)}:
            event("fire at a UTC-offset transition")


# --------------------------------------------------------------------------- the oracle itself


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _oracle(expr: str, zone: str, start: datetime, n: int) -> list[datetime]:
    it = oracle_fires(
        OracleCron.parse(expr), zone, _us(start), inclusive=True, until_s=_ts(start) + 1200 * 86_400
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
        # The 8th or the third Friday (Vixie's OR with a Quartz '#').
        (
            "0 12 8 * 5#3",
            "UTC",
            utc(2026, 1, 1),
            [utc(2026, 1, 8, 12), utc(2026, 1, 16, 12), utc(2026, 2, 8, 12), utc(2026, 2, 20, 12)],
        ),
        # Quartz: no 30th in February, so no fire there; 2026-05-30 is a Saturday.
        (
            "0 12 30W * *",
            "UTC",
            utc(2026, 1, 15),
            [
                utc(2026, 1, 30, 12),
                utc(2026, 3, 30, 12),
                utc(2026, 4, 30, 12),
                utc(2026, 5, 29, 12),
            ],
        ),
        ("0 12 L-3 * *", "UTC", utc(2026, 2, 1), [utc(2026, 2, 25, 12), utc(2026, 3, 28, 12)]),
        # 2026-05-31 is a Sunday: the last weekday is Friday the 29th.
        ("0 12 LW * *", "UTC", utc(2026, 5, 1), [utc(2026, 5, 29, 12), utc(2026, 6, 30, 12)]),
        # 2026-03-29 (L-2) is a Sunday: the nearest weekday is Monday the 30th.
        ("0 12 L-2W 3 *", "UTC", utc(2026, 3, 1), [utc(2026, 3, 30, 12)]),
        # 2026-08-01 is a Saturday: 1W does not leave the month, it is Monday the 3rd.
        ("0 12 1W 8 *", "UTC", utc(2026, 8, 1), [utc(2026, 8, 3, 12)]),
        ("0 12 * * 5L", "UTC", utc(2026, 1, 1), [utc(2026, 1, 30, 12), utc(2026, 2, 27, 12)]),
        ("0 12 * * L", "UTC", utc(2026, 1, 1), [utc(2026, 1, 3, 12), utc(2026, 1, 10, 12)]),
        ("0 0 0 1 1 ? 2027,2029", "UTC", utc(2026, 1, 1), [utc(2027, 1, 1), utc(2029, 1, 1)]),
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
        # Quartz's last-weekday forms on DST days: Berlin's last Sundays of March and
        # October 2024 (gap at 02:00-03:00, overlap at 02:00-03:00).
        ("30 2 * * SUNL", "Europe/Berlin", utc(2024, 3, 1)),
        ("30 2 * 10 7L", "Europe/Berlin", utc(2024, 10, 1)),
        ("*/20 2 * * 0L", "Europe/Berlin", utc(2024, 10, 1)),
        # The 5th, the 6th (L-24 in April) or the first Sunday: 2025-04-06 is Adelaide's
        # fall-back day.
        ("30 2 5,L-24 4 0#1", "Australia/Adelaide", utc(2025, 3, 20)),
        # Santiago springs forward at midnight on the first Sunday of September 2025.
        ("30 0 LW,W1 9 0#1", "America/Santiago", utc(2025, 8, 25)),
        ("0 30 0 L-23W 9 ? 2025", "America/Santiago", utc(2025, 8, 25)),
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
    "expr",
    [
        "0 0 1 * 0#1",
        "0 0 1,15 * sun#1",
        "0 0 15W * mon",
        "0 0 1 * L0",
        "0 0 1 * fri#2",
        "0 0 L * 1#1,fri",
        "0 0 LW,15 * 5L,mon#2",
        "0 0 L-3W,1W * L",
    ],
)
def test_day_forms_in_both_day_fields_fire_on_the_union(expr: str) -> None:
    # croniter intersects the day fields when one uses '#', 'L' or 'W', where Vixie cron
    # ORs them: the union is computed by jobsched's own day rule, checked here.
    fires = check_against_oracle(expr, "Europe/Berlin", utc(2026, 1, 20), window_s=70 * 86_400)
    assert len(fires) >= 2
