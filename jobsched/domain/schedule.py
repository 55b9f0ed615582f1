"""Schedule parsing and fire-time arithmetic.

Everything here is pure: no clock is read, no I/O is done, so the scheduler can replay
any moment (take-over after a crash, tests) by passing the time in.

Instants in and out are timezone-aware UTC ``datetime`` objects; a naive datetime is a
bug in the caller (its meaning would depend on the machine), so it raises ``ValueError``.
Aware non-UTC input is accepted and converted; output is always UTC.

Cron expressions are evaluated against the local wall clock of the schedule's time zone,
with daylight saving handled as Debian's cron does:

* A *fixed-time* job is one whose hour, minute and (6-field form) seconds fields contain
  neither ``*`` nor ``/``. If its wall time falls in a spring-forward gap it runs once, at
  the end of the gap; in a fall-back overlap it runs once, at the first occurrence.
* Every other job follows elapsed time: it fires at each real instant whose wall-clock
  reading matches, so wall times in a gap never fire and wall times in an overlap fire
  in both occurrences (``*/15`` keeps firing every 15 real minutes, ``0 * * * *`` at each
  real hour).

croniter only ever sees wall clocks represented as UTC datetimes (so it does no DST
handling of its own, which is wrong for fall-back days); the mapping from wall clock to
real instants is done here, segment by segment between UTC-offset transitions.
"""

from __future__ import annotations

import re
import threading
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache, lru_cache
from typing import Literal

from croniter import croniter

__all__ = [
    "MAX_EVERY",
    "MAX_EXPRESSION_LENGTH",
    "MIN_EVERY",
    "Schedule",
    "ScheduleError",
    "ScheduleKind",
    "coalesce_next_fire",
    "first_fire_at",
    "next_fire_after",
    "parse_schedule",
]

ScheduleKind = Literal["immediate", "at", "cron", "every"]

MAX_EXPRESSION_LENGTH = 200
#: Shorter intervals would turn one job into a load test of the whole pipeline.
MIN_EVERY = timedelta(seconds=1)
#: Bounds the arithmetic; a job that fires less often than this should be a cron or "at".
MAX_EVERY = timedelta(days=3650)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_NAMES_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_NAMES_6 = ("second", *_FIELD_NAMES_5)
_FIELD_SPLIT = re.compile(r"[ \t]+")
# croniter's hashed (H) and random (R) values: H needs a per-job id we do not have, and R
# would make the fire times differ between two parses of the same job.
_HASH_OR_RANDOM = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_DATE_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
# Reference start for the "can it ever fire" search. Between 1901 and 2099 the calendar
# (leap years and weekdays together) repeats every 28 years, so 50 years from here sees
# every combination of day, month and weekday an expression can name.
_NEVER_FIRES_FROM = datetime(2000, 1, 1, tzinfo=UTC)
_NEVER_FIRES_YEARS = 50
# Upper bound on UTC-offset transitions crossed in one next-fire search (two a year for
# the 50 years croniter searches, with room to spare); past it the job is "never again".
_MAX_SEGMENTS = 256
_ONE_US = timedelta(microseconds=1)
# What croniter raises on bad input or an exhausted search (its errors are ValueErrors);
# caught wide on purpose, since no schedule text may turn into a 5xx.
_CRON_FAILURES = (ValueError, TypeError, LookupError, ArithmeticError)
_ONE_S = timedelta(seconds=1)
_ONE_DAY = timedelta(days=1)
# Spans longer than this are checked at their ends only (_settled); shorter ones are
# probed day by day (_first_transition), which costs little over a few days.
_SETTLED_SPAN = timedelta(days=3)
_UTC_ALIASES = frozenset(
    {"UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu"}
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_S = 86_400


class ScheduleError(ValueError):
    """A schedule the API must refuse; ``str()`` is the reason, fit for a problem+json body.

    ``field`` names the request field at fault ("schedule" or "timezone") so the API can
    point at it.
    """

    def __init__(self, reason: str, field: str = "schedule") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Schedule:
    """A validated schedule. Build it with :func:`parse_schedule`, never directly, so that
    every instance is known to be able to fire."""

    kind: ScheduleKind
    #: The text as submitted, so the API can return exactly what the client sent.
    expression: str
    #: IANA name; only cron evaluation uses it.
    timezone: str
    _at: datetime | None = field(default=None, repr=False)
    _interval: timedelta | None = field(default=None, repr=False)
    #: Cron with macros expanded, ``?`` replaced and single spaces; 5 or 6 fields.
    _cron: str | None = field(default=None, repr=False)
    _fixed_time: bool = field(default=False, repr=False)

    @property
    def is_recurring(self) -> bool:
        """Whether the job stays active after a fire (one-shot jobs complete)."""
        return self.kind in ("cron", "every")


# --------------------------------------------------------------------------- parsing


@lru_cache(maxsize=8192)
def parse_schedule(expression: str, timezone: str = "UTC") -> Schedule:
    """Validate ``expression`` and ``timezone`` and return the :class:`Schedule`.

    Accepted forms (leading/trailing whitespace is ignored):

    * ``immediate``;
    * an RFC 3339 timestamp with ``Z`` or an explicit offset, fractional seconds allowed
      (truncated to microseconds); a timestamp without an offset is ambiguous and refused;
    * cron: 5 fields, or 6 with *seconds first* (Quartz/Temporal); month and weekday names,
      ``L``, ``W``, ``#`` as croniter supports them; ``?`` means ``*`` in the two day
      fields. When both day fields are restricted (neither starts with ``*`` or ``?``) a day
      matching either fires (Vixie cron), otherwise both must match;
    * ``@yearly @annually @monthly @weekly @daily @midnight @hourly``;
    * ``@every <duration>``: Go-style ``<number><unit>`` parts summed (``1h30m``, ``1.5h``,
      ``1d``), units ``ms s m h d``; at least 1 s (``MIN_EVERY``) and at most 3650 days.

    ``timezone`` must be an IANA zone name; it is validated for every kind but only cron
    uses it. ``TZ=``/``CRON_TZ=`` prefixes are refused so there is one place for the zone.
    A cron expression that matches no date (``0 0 30 2 *``) is refused.
    """
    if not isinstance(expression, str):
        raise ScheduleError("schedule must be a string")
    _zone(timezone)  # validates
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ScheduleError(
            f"schedule must be at most {MAX_EXPRESSION_LENGTH} characters, got {len(expression)}"
        )
    text = expression.strip()
    if not text:
        raise ScheduleError("schedule must not be empty")
    if not text.isascii() or not text.replace("\t", " ").isprintable():
        raise ScheduleError("schedule must contain only printable ASCII characters")
    upper = text.upper()
    if upper.startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError(
            "a TZ=/CRON_TZ= prefix is not supported; put the zone in the timezone field"
        )
    if text.lower() == "immediate":
        return Schedule("immediate", expression, timezone)
    if _DATE_PREFIX.match(text):
        return Schedule("at", expression, timezone, _at=_parse_timestamp(text))
    lowered = text.lower()
    if lowered == "@every" or lowered.startswith(("@every ", "@every\t")):
        return Schedule("every", expression, timezone, _interval=_parse_every(text[6:].strip()))
    if text.startswith("@"):
        name, *rest = lowered.split()
        cron = _MACROS.get(name)
        if cron is None:
            raise ScheduleError(
                f"unknown schedule macro '{name}'; use one of "
                + ", ".join(sorted(_MACROS))
                + " or '@every <duration>'"
            )
        if rest:
            raise ScheduleError(f"schedule macro '{name}' takes no arguments")
    else:
        cron = text
    normalized, fixed = _parse_cron(cron)
    return Schedule("cron", expression, timezone, _cron=normalized, _fixed_time=fixed)


@cache
def _available_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    """Load an IANA zone, refusing names that are not in the tz database (paths,
    "localtime", which means whatever the host is set to)."""
    if not isinstance(name, str) or not name:
        raise ScheduleError("time zone must not be empty", field="timezone")
    shown = name if len(name) <= 64 else name[:64] + "..."
    unknown = ScheduleError(f"unknown time zone '{shown}'", field="timezone")
    if name == "localtime" or not name.isascii() or not name.isprintable():
        raise unknown
    known = _available_zones()
    if known and name not in known:
        raise unknown
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise unknown from None


def _parse_timestamp(text: str) -> datetime:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ScheduleError(
            f"'{text}' is not an RFC 3339 timestamp; expected e.g. 2026-01-01T09:00:00Z"
        )
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, offset = m.group(7), m.group(8)
    if offset is None:
        raise ScheduleError(
            f"timestamp '{text}' has no UTC offset; add Z or an offset such as +01:00"
        )
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if offset in ("Z", "z"):
        tz = UTC
    else:
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            raise ScheduleError(f"timestamp '{text}' has an invalid UTC offset")
        delta = timedelta(hours=oh, minutes=om)
        tz = timezone(-delta if offset[0] == "-" else delta)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tz).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ScheduleError(f"timestamp '{text}' is not a valid time: {exc}") from None


def _parse_every(duration: str) -> timedelta:
    if not duration:
        raise ScheduleError("@every needs a duration, e.g. '@every 30s' or '@every 1h30m'")
    pos, total_us = 0, Decimal(0)
    for m in _DURATION_PART.finditer(duration):
        if m.start() != pos:
            break
        total_us += Decimal(m.group(1)) * _UNIT_US[m.group(2)]
        pos = m.end()
    if pos != len(duration) or pos == 0:
        raise ScheduleError(
            f"invalid duration '{duration}'; use numbers with units ms, s, m, h or d, "
            "e.g. 30s, 5m, 1h30m"
        )
    if total_us != total_us.to_integral_value():
        raise ScheduleError(f"duration '{duration}' is finer than a microsecond")
    if total_us < MIN_EVERY / _ONE_US:
        raise ScheduleError(f"@every interval must be at least 1s, got {duration}")
    if total_us > MAX_EVERY / _ONE_US:
        raise ScheduleError(f"@every interval must be at most {MAX_EVERY.days}d, got {duration}")
    return timedelta(microseconds=int(total_us))


def _parse_cron(text: str) -> tuple[str, bool]:
    """Return (normalized expression, is fixed-time) or raise with a readable reason."""
    fields = _FIELD_SPLIT.split(text)
    if len(fields) not in (5, 6):
        raise ScheduleError(f"cron expression must have 5 or 6 fields, got {len(fields)}")
    names = _FIELD_NAMES_5 if len(fields) == 5 else _FIELD_NAMES_6
    for i, value in enumerate(fields):
        if _HASH_OR_RANDOM.fullmatch(value):
            raise ScheduleError(
                f"cron {names[i]} field '{value}': hashed (H) and random (R) values "
                "are not supported"
            )
    # '?' is Quartz for "no specific value"; croniter would accept it too, but the stored
    # form should say what it means.
    for i in (len(fields) - 3, len(fields) - 1):
        if fields[i] == "?":
            fields[i] = "*"
    # croniter widens a one-value range 'a-a' to the whole field ("Jan-Jan is the whole
    # cycle"); in cron it is the single value a.
    fields = [_collapse_single_ranges(f) for f in fields]
    dom, dow = fields[-3], fields[-1]
    if dom[0] != "*" and dow[0] != "*" and ("W" in dom.upper() or "#" in dow
                                            or "L" in dow.upper()):
        # croniter intersects instead of OR-ing when a day field uses these forms.
        raise ScheduleError(
            "when both day-of-month and day-of-week are restricted, neither may use "
            "'W', '#' or 'L' (write two jobs, one per day field)"
        )
    normalized = " ".join(fields)
    try:
        _croniter(normalized)
    except _CRON_FAILURES as exc:
        raise ScheduleError(_explain_cron_error(fields, names, exc)) from None
    try:
        _croniter(normalized, max_years=_NEVER_FIRES_YEARS).get_next(
            datetime, start_time=_NEVER_FIRES_FROM
        )
    except _CRON_FAILURES:
        raise ScheduleError("cron expression can never fire") from None
    time_fields = fields[:3] if len(fields) == 6 else fields[:2]
    fixed = not any(("*" in f or "/" in f) for f in time_fields)
    return normalized, fixed


_SINGLE_RANGE = re.compile(r"^([0-9A-Za-z]+)-([0-9A-Za-z]+)(/\d+)?$")


def _collapse_single_ranges(field_text: str) -> str:
    """'9-9' -> '9', 'tue-TUE/2' -> 'tue' (a step over one value is that value)."""
    parts = []
    for part in field_text.split(","):
        match = _SINGLE_RANGE.match(part)
        if match and match.group(1).lower() == match.group(2).lower():
            part = match.group(1)
        parts.append(part)
    return ",".join(parts)


def _explain_cron_error(fields: list[str], names: tuple[str, ...], exc: Exception) -> str:
    """Turn croniter's message into one that names the offending field."""
    for i, value in enumerate(fields):
        probe = ["0"] * len(fields)
        probe[len(fields) - 1] = probe[len(fields) - 2] = probe[len(fields) - 3] = "*"
        probe[i] = value
        try:
            _croniter(" ".join(probe))
        except _CRON_FAILURES as field_exc:
            return f"invalid cron {names[i]} field '{value}': {_croniter_reason(field_exc)}"
    return f"invalid cron expression: {_croniter_reason(exc)}"


def _croniter_reason(exc: Exception) -> str:
    msg = str(exc)
    if "Question mark" in msg:
        return "'?' is only allowed in the day-of-month and day-of-week fields"
    # croniter messages look like "[0 0 * 13 *] is not acceptable, out of range" or
    # "[*/0 0 * * *] step '0' in field 0 is not acceptable"; the field is named by us.
    msg = re.sub(r"^\[[^\]]*\]\s*", "", msg)
    msg = re.sub(r"^is not acceptable[,.]?\s*", "", msg)
    msg = re.sub(r" in field \d+", "", msg).strip()
    return msg or "not a valid value"


def _croniter(expr: str, max_years: int | None = None) -> croniter:
    return croniter(
        expr,
        _NEVER_FIRES_FROM,
        day_or=True,
        # croniter's name for Vixie cron's rule: a day field starting with '*' (after our
        # '?' -> '*') means the two day fields are ANDed, otherwise ORed.
        implement_cron_bug=True,
        second_at_beginning=expr.count(" ") == 5,
        max_years_between_matches=max_years,
    )


# --------------------------------------------------------------------------- fire times


def first_fire_at(schedule: Schedule, now: datetime) -> datetime | None:
    """The first fire of a schedule created (or resumed) at ``now``.

    * ``immediate``: ``now``.
    * ``at``: the given time, even when it is already past: a one-shot job submitted late
      still runs, at once, rather than being silently dropped.
    * ``cron``: the first fire at or after ``now`` (inclusive: a job created exactly on a
      matching second fires at ``now``, not one period later).
    * ``every``: ``now + interval`` (the phase is anchored at creation).
    """
    now = _utc(now, "now")
    if schedule.kind == "immediate":
        return now
    if schedule.kind == "at":
        return schedule._at
    if schedule.kind == "every":
        return now + _interval(schedule)
    return _cron_next(schedule, now - _ONE_US)


def next_fire_after(schedule: Schedule, previous: datetime) -> datetime | None:
    """The fire that follows the fire at ``previous`` (strictly later); ``None`` for
    one-shot kinds. For ``every`` it is ``previous + interval`` so the phase never drifts
    with execution time."""
    previous = _utc(previous, "previous")
    if schedule.kind in ("immediate", "at"):
        return None
    if schedule.kind == "every":
        return previous + _interval(schedule)
    return _cron_next(schedule, previous)


def coalesce_next_fire(
    schedule: Schedule, scheduled_for: datetime, now: datetime
) -> datetime | None:
    """The first fire after the fire ``scheduled_for`` that is strictly after ``now``.

    Fires between the two are skipped (the caller runs the missed one once: the
    "run_once" misfire policy). ``every`` stays on its original grid
    ``scheduled_for + k * interval`` and is computed arithmetically, so a year-long outage
    of a 1 s job costs nothing. ``None`` for one-shot kinds.
    """
    scheduled_for = _utc(scheduled_for, "scheduled_for")
    now = _utc(now, "now")
    if schedule.kind in ("immediate", "at"):
        return None
    if schedule.kind == "every":
        interval = _interval(schedule)
        if now < scheduled_for:
            return scheduled_for + interval
        return scheduled_for + ((now - scheduled_for) // interval + 1) * interval
    return _cron_next(schedule, max(scheduled_for, now))


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
    return value.astimezone(UTC)


def _interval(schedule: Schedule) -> timedelta:
    assert schedule._interval is not None
    return schedule._interval


# Parsed croniter objects are expensive to build (~80 us) and cheap to reuse (~25 us per
# get_next); they are stateful, hence one per thread.
_local = threading.local()


def _wall_next(expr: str, wall: datetime) -> datetime | None:
    """First wall-clock time matching ``expr`` strictly after ``wall``. Wall clocks are
    represented as UTC datetimes so croniter applies no DST logic of its own."""
    cache: dict[str, croniter] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
        _local.spans = {}
    # The last answer of each expression holds for every wall clock from the one it was
    # asked for up to the answer itself (nothing matches in between): many jobs sharing a
    # schedule, and the same fire advanced for each, cost one croniter call.
    spans: dict[str, tuple[datetime, datetime]] = _local.spans
    span = spans.get(expr)
    if span is not None and span[0] <= wall < span[1]:
        return span[1]
    it = cache.get(expr)
    if it is None:
        if len(cache) >= 4096:
            cache.clear()
            spans.clear()
        it = cache[expr] = _croniter(expr)
    try:
        result: datetime = it.get_next(datetime, start_time=wall)
    except _CRON_FAILURES:  # CroniterBadDateError (nothing in 50 years) or year overflow
        return None
    spans[expr] = (wall, result)
    return result


def _offset(zone: zoneinfo.ZoneInfo, ts: int) -> timedelta:
    off = datetime.fromtimestamp(ts, zone).utcoffset()
    assert off is not None
    return off


@lru_cache(maxsize=1024)
def _is_fixed_offset(name: str) -> bool:
    """UTC (the default) and the Etc/ zones never change offset: skip the probing."""
    return name.startswith("Etc/") or name in _UTC_ALIASES


def _first_transition(
    zone: zoneinfo.ZoneInfo, start: datetime, end: datetime, offset: timedelta
) -> datetime | None:
    """The earliest instant in (start, end] whose UTC offset differs from ``offset`` (the
    offset in effect at ``start``), or None.

    The span is probed once a day (tz transitions are never closer than that in practice)
    and the change is then located by bisection to the second (transitions fall on whole
    seconds).
    """
    if _is_fixed_offset(zone.key):
        return None
    lo = (start - _EPOCH) // _ONE_S
    last = -((_EPOCH - end) // _ONE_S)
    hi = None
    probe = lo
    while probe < last:
        probe = min(probe + _DAY_S, last)
        if _offset(zone, probe) != offset:
            hi = probe
            break
        lo = probe
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(zone, mid) == offset:
            lo = mid
        else:
            hi = mid
    found = datetime.fromtimestamp(hi, UTC)
    return found if start < found <= end else None


def _settled(zone: zoneinfo.ZoneInfo, start: datetime, end: datetime,
             offset: timedelta) -> bool:
    """Whether the wall match found for the segment starting at ``start`` (the instant
    ``end``, read with ``offset``) stands without walking the span between them.

    It does when the span is long and the offset is ``offset`` at both ends and a day
    inside each: then every change of offset in between lies more than a day from either
    end, so none moves the wall match (it is the first after the segment's start, and each
    change only restarts the search further on, below it) and the segment-by-segment walk
    would come back to this very instant. A rare fire (29 February, every four years) then
    costs four offset lookups instead of a probe for each day between two fires.
    """
    if end - start <= _SETTLED_SPAN:
        return False
    ends = (start + _ONE_DAY, end - _ONE_DAY, end)
    return all(_offset(zone, (moment - _EPOCH) // _ONE_S) == offset for moment in ends)


def _cron_next(schedule: Schedule, after: datetime) -> datetime | None:
    """The first cron fire strictly after the instant ``after``, with the DST rules of the
    module docstring.

    Between two UTC-offset transitions the wall clock is the instant plus a constant
    offset, so croniter's next wall match maps straight back to an instant. When that
    instant lies beyond a transition, the search restarts at the transition with the new
    offset: from the first wall time that never happened before for a fixed-time job, from
    the new (possibly repeated) wall time for any other job; and a fixed-time match inside a
    spring-forward gap fires at the transition itself, which is the end of the gap.
    """
    expr = schedule._cron
    assert expr is not None
    zone = _zone(schedule.timezone)
    fixed = schedule._fixed_time
    try:
        local = after.astimezone(zone)
        offset = local.utcoffset()
        assert offset is not None
        seg_start = after
        wall_after = after + offset  # exclusive lower bound on wall-clock matches
        if fixed and local.fold == 1:
            # ``after`` is in the second pass through a repeated hour: those wall times
            # were already served by the first pass, so start at the end of the overlap.
            first_offset = local.replace(fold=0).utcoffset()
            assert first_offset is not None
            change = _first_transition(zone, after - (first_offset - offset), after, first_offset)
            if change is not None:
                wall_after = max(wall_after, change + first_offset - _ONE_US)
        for _ in range(_MAX_SEGMENTS):
            wall = _wall_next(expr, wall_after)
            if wall is None:
                return None
            instant = wall - offset
            if _settled(zone, seg_start, instant, offset):
                return instant
            change = _first_transition(zone, seg_start, instant, offset)
            if change is None:
                return instant
            new_offset = _offset(zone, (change - _EPOCH) // _ONE_S)
            if new_offset > offset:  # spring forward: [change+offset, change+new) skipped
                if fixed and wall < change + new_offset:
                    return change
                wall_after = change + new_offset - _ONE_US
            else:  # fall back: [change+new, change+offset) happens twice
                wall_after = change + (offset if fixed else new_offset) - _ONE_US
            seg_start, offset = change, new_offset
        return None
    except (OverflowError, ValueError):  # beyond year 9999
        return None
