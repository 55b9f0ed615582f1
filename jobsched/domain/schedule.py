"""Schedule parsing and fire-time arithmetic.

Everything here is pure: no clock is read, no I/O is done, so the scheduler can replay
any moment (take-over after a crash, tests) by passing the time in.

Instants in and out are timezone-aware UTC ``datetime`` objects; a naive datetime is a
bug in the caller (its meaning would depend on the machine), so it raises ``ValueError``.
Aware non-UTC input is accepted and converted; output is always UTC.

Cron expressions are evaluated against the local wall clock of the schedule's time zone,
with daylight saving handled as Debian's cron does:

* A *fixed-time* job is one whose hour, minute and (6- and 7-field forms) seconds fields
  contain neither ``*`` nor ``/`` (a hashed ``H`` or ``a~b`` counts as a value, ``H/15``
  as a step). If its wall time falls in a spring-forward gap it runs once, at the end of
  the gap; in a fall-back overlap it runs once, at the first occurrence.
* Every other job follows elapsed time: it fires at each real instant whose wall-clock
  reading matches, so wall times in a gap never fire and wall times in an overlap fire
  in both occurrences (``*/15`` keeps firing every 15 real minutes, ``0 * * * *`` at each
  real hour).

croniter only ever sees wall clocks represented as UTC datetimes (so it does no DST
handling of its own, which is wrong for fall-back days); the mapping from wall clock to
real instants is done here, segment by segment between UTC-offset transitions.

Which *dates* fire: croniter evaluates expressions whose day fields are plain (numbers,
names, ranges, steps, lists), where it has cron's meaning. An expression that uses the
Quartz day forms (``L``, ``L-3``, ``LW``, ``15W``, ``5L``, ``5#3``) or a Quartz year field
is evaluated by a :class:`_DayRule` instead: croniter then only answers the time of day,
and the dates come from plain calendar arithmetic over croniter's own expansion of each
field. That is what lets every day form combine with any other, with Vixie's rule: when
both day fields are restricted (neither starts with ``*`` or ``?``) a day matching either
fires, otherwise both must match. croniter intersects the fields when one of them uses
these forms, and reads ``30W`` in February as the 28th where Quartz does not fire.

Hashed values (Jenkins' ``H``, ``H(0-29)``, ``H/15``, and cronie's ``a~b``) are a value
fixed per job: SHA-256 of the seed (the job id's bytes) and the field's name, so that it
survives restarts and edits of the other fields, and thousands of jobs spread evenly.
Without a seed an expression still validates (it must be able to fire whatever value a
job's id picks), but the :class:`Schedule` is marked ``needs_seed`` and has no fire
times.
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import math
import re
import threading
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache, lru_cache
from typing import Literal

from croniter import croniter

from jobsched.domain.durations import DurationError, DurationTooLong, parse_duration

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
_FIELD_NAMES: dict[int, tuple[str, ...]] = {
    5: ("minute", "hour", "day-of-month", "month", "day-of-week"),
    6: ("second", "minute", "hour", "day-of-month", "month", "day-of-week"),
    7: ("second", "minute", "hour", "day-of-month", "month", "day-of-week", "year"),
}
#: The fields that decide on which dates a job fires (a hashed value elsewhere only moves
#: the time of day, so it can never stop a job from firing).
_DATE_FIELDS = ("day-of-month", "month", "day-of-week")
_LIMITS = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (0, 7),
    "year": (1970, 2099),  # croniter's range
}
#: Jenkins' range for a bare ``H``: days 1-28 exist in every month, and 0-6 names each
#: weekday once (7 is Sunday again).
_HASH_LIMITS = {**_LIMITS, "day-of-month": (1, 28), "day-of-week": (0, 6)}
_FIELD_SPLIT = re.compile(r"[ \t]+")
_HASHED = re.compile(r"H(?:\((\d+)-(\d+)\))?(?:/(\d+))?", re.IGNORECASE)
_TILDE = re.compile(r"(\d*)~(\d*)")
_RANDOM = re.compile(r"R(?:\(\d+-\d+\))?(?:/\d+)?", re.IGNORECASE)
# Quartz day-of-month forms: L, L-3, LW, L-3W; 15W (and croniter's W15).
_LAST_DAY = re.compile(r"L(?:-(\d+))?(W?)", re.IGNORECASE)
_NEAREST_WEEKDAY = re.compile(r"(\d+)W|W(\d+)", re.IGNORECASE)
# Day-of-week forms: 5#3 / FRI#3 (the third Friday), 5L / FRIL (Quartz) and L5 (croniter)
# for the last Friday; a lone L is Quartz's Saturday. No weekday name starts or ends in L.
_NTH_WEEKDAY = re.compile(r"([^#]+)#(\d+)")
_LAST_WEEKDAY = re.compile(r"L(.+)|(.+)L", re.IGNORECASE)
_YEAR_RANGE = re.compile(r"(\d+)-(\d+)(?:/\d+)?")
#: Quartz's bound on ``L-n``.
_MAX_LAST_DAY_OFFSET = 30
#: Bound on the hashed combinations checked by "can it fire whatever the job's id".
_MAX_HASH_COMBINATIONS = 4096
_DATE_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?"
)
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
class _DayRule:
    """Which dates a cron expression fires on, for the forms croniter cannot evaluate with
    cron's meaning. Days of the week are cron's: 0 is Sunday."""

    #: Plain days of the month (numbers, ranges, steps: croniter's expansion).
    days: frozenset[int]
    #: ``L-n``: the n-th day before the last (``L`` is 0); no fire when the month is shorter.
    last_minus: frozenset[int]
    #: ``L-nW`` (``LW`` is 0): the weekday nearest that day.
    last_minus_weekday: frozenset[int]
    #: ``nW``: the weekday nearest the n-th, within the month; none when it has no n-th.
    nearest_weekday: frozenset[int]
    weekdays: frozenset[int]
    #: ``d#n``: (weekday, n), the n-th such weekday of the month.
    nth_weekday: frozenset[tuple[int, int]]
    #: ``dL``: the last such weekday of the month.
    last_weekday: frozenset[int]
    #: Vixie: both day fields restricted, so a day matching either fires.
    either: bool
    months: frozenset[int]
    #: Quartz's year field; ``None`` is every year.
    years: frozenset[int] | None


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
    #: What croniter evaluates: the cron with macros expanded, hashed values resolved, ``?``
    #: replaced and single spaces (5 or 6 fields); when ``_days`` is set, only its time of
    #: day (day fields ``*``).
    _cron: str | None = field(default=None, repr=False)
    _fixed_time: bool = field(default=False, repr=False)
    _days: _DayRule | None = field(default=None, repr=False)
    #: The expression has hashed values (``H``, ``a~b``) and was parsed without a seed: it
    #: is valid, but its fire times depend on the job, so it has none.
    needs_seed: bool = False

    @property
    def is_recurring(self) -> bool:
        """Whether the job stays active after a fire (one-shot jobs complete)."""
        return self.kind in ("cron", "every")


# --------------------------------------------------------------------------- parsing


def parse_schedule(
    expression: str, timezone: str = "UTC", seed: bytes | None = None
) -> Schedule:
    """Validate ``expression`` and ``timezone`` and return the :class:`Schedule`.

    Accepted forms (leading/trailing whitespace is ignored):

    * ``immediate``;
    * an RFC 3339 timestamp with ``Z`` or an explicit offset, fractional seconds allowed
      (truncated to microseconds); a timestamp without an offset is ambiguous and refused;
    * cron: 5 fields, 6 with *seconds first* (Quartz/Temporal), or 7 with a Quartz year
      last (1970-2099); numbers, ranges, steps, lists, month and weekday names (weekday 0
      or 7 is Sunday); ``?`` means ``*`` in the two day fields; Quartz's ``L``, ``L-n``,
      ``LW``, ``nW`` in the day of month and ``d#n``, ``dL`` (and ``Ld``), a lone ``L``
      (Saturday) in the day of week; Jenkins' hashed ``H``, ``H(a-b)``, ``H/n``,
      ``H(a-b)/n`` and cronie's ``a~b``, ``~``. When both day fields are restricted
      (neither starts with ``*`` or ``?``) a day matching either fires (Vixie cron),
      otherwise both must match;
    * ``@yearly @annually @monthly @weekly @daily @midnight @hourly`` (Vixie's meaning);
    * ``@every <duration>``: a duration of ``jobsched.domain.durations`` (``90``, ``1h30m``,
      ``1.5h``, ``1d``, ``2w``; units ``ms s m h d w``); at least 1 s (``MIN_EVERY``) and
      at most 3650 days.

    ``timezone`` must be an IANA zone name; it is validated for every kind but only cron
    uses it. ``TZ=``/``CRON_TZ=`` prefixes are refused so there is one place for the zone.
    A cron expression that matches no date (``0 0 30 2 *``) is refused; so is one with
    hashed values that some job's id would leave unable to fire (``0 0 H(29-31) 2 *``).

    ``seed`` (the job id's bytes) picks the hashed values. Without it an expression that
    has some is valid but ``needs_seed``: it has no fire times. Expressions without hashed
    values ignore the seed, so one cached parse serves every job that shares them.
    """
    if seed is not None and not isinstance(seed, bytes):
        raise TypeError(f"seed must be bytes, got {type(seed).__name__}")
    schedule = _parse_schedule(expression, timezone, None)
    if seed is None or not schedule.needs_seed:
        return schedule
    return _parse_schedule(expression, timezone, seed)


@lru_cache(maxsize=8192)
def _parse_schedule(expression: str, timezone: str, seed: bytes | None) -> Schedule:
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
        if name == "@reboot":
            raise ScheduleError(
                "@reboot (run when the cron daemon starts) has no meaning for a scheduler "
                "cluster; use 'immediate' for one run now"
            )
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
    normalized, days, fixed, needs_seed = _parse_cron(cron, seed)
    return Schedule(
        "cron", expression, timezone,
        _cron=normalized, _fixed_time=fixed, _days=days, needs_seed=needs_seed,
    )


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
    try:
        interval = parse_duration(duration)
    except DurationTooLong:
        interval = MAX_EVERY + _ONE_US  # refused below, in @every's own words
    except DurationError as exc:
        raise ScheduleError(str(exc)) from None
    if interval < MIN_EVERY:
        raise ScheduleError(f"@every interval must be at least 1s, got {duration}")
    if interval > MAX_EVERY:
        raise ScheduleError(f"@every interval must be at most {MAX_EVERY.days}d, got {duration}")
    return interval


# --------------------------------------------------------------------------- cron


def _parse_cron(text: str, seed: bytes | None) -> tuple[str, _DayRule | None, bool, bool]:
    """Return (what croniter evaluates, day rule or None, is fixed-time, needs a seed), or
    raise with a readable reason."""
    fields = _FIELD_SPLIT.split(text)
    if len(fields) not in _FIELD_NAMES:
        raise ScheduleError(f"cron expression must have 5, 6 or 7 fields, got {len(fields)}")
    names = _FIELD_NAMES[len(fields)]
    for name, value in zip(names, fields, strict=True):
        if any(_RANDOM.fullmatch(item) for item in value.split(",")):
            raise ScheduleError(
                f"cron {name} field '{value}': random (R) values are not supported (they "
                "would change each time the schedule is read); H picks a value per job "
                "and keeps it"
            )
    # '?' is Quartz for "no specific value"; croniter would accept it too, but the stored
    # form should say what it means.
    key = tuple(
        "*" if value == "?" and name in ("day-of-month", "day-of-week") else value
        for name, value in zip(names, fields, strict=True)
    )
    hashed = _hashed_items(key)
    time_items = [
        (i, j, item)
        for i, value in enumerate(key[: names.index("day-of-month")])
        for j, item in enumerate(value.split(","))
    ]
    periodic = {(i, j) for i, j, h in hashed if h.periodic}
    fixed = not any(
        (i, j) in periodic or (("*" in item or "/" in item) and not _is_hashed(item))
        for i, j, item in time_items
    )
    if not hashed:
        return (*_compile(key), fixed, False)
    _fires_for_every_seed(key)
    values = {i: _hash_value(seed, names[i]) if seed is not None else 0 for i, _, _ in hashed}
    return (*_compile(_resolve(key, hashed, values)), fixed, seed is None)


@dataclass(frozen=True)
class _Hashed:
    """One hashed list item: the value lists a job can get; the job's hash picks one."""

    choices: tuple[tuple[int, ...], ...]
    #: ``H/n``: a step (so not fixed-time), not one value.
    periodic: bool = False


def _is_hashed(item: str) -> bool:
    return bool(_HASHED.fullmatch(item) or _TILDE.fullmatch(item))


def _hash_value(seed: bytes, field_name: str) -> int:
    """The job's number for one field: independent of the other fields (so editing them
    moves nothing) and of Python's per-process ``hash()`` salt."""
    digest = hashlib.sha256(b"jobsched cron H\x00" + seed + b"\x00" + field_name.encode())
    return int.from_bytes(digest.digest()[:8], "big")


@lru_cache(maxsize=4096)
def _hashed_items(fields: tuple[str, ...]) -> tuple[tuple[int, int, _Hashed], ...]:
    """(field index, list index, item) for every hashed item, validated."""
    names = _FIELD_NAMES[len(fields)]
    found = []
    for i, (name, value) in enumerate(zip(names, fields, strict=True)):
        for j, item in enumerate(value.split(",")):
            hashed = _hashed_item(name, value, item)
            if hashed is not None:
                found.append((i, j, hashed))
    return tuple(found)


def _field_error(name: str, value: str, item: str, reason: str) -> ScheduleError:
    """Name the field, and the list item when the field has several."""
    where = "" if item == value else f"'{item}': "
    return ScheduleError(f"invalid cron {name} field '{value}': {where}{reason}")


def _hashed_item(name: str, value: str, item: str) -> _Hashed | None:
    def bad(reason: str) -> ScheduleError:
        return _field_error(name, value, item, reason)

    step: int | None = None
    if m := _HASHED.fullmatch(item):
        low, high = (int(m[1]), int(m[2])) if m[1] is not None else _HASH_LIMITS[name]
        step = int(m[3]) if m[3] is not None else None
        if step == 1:  # Jenkins: H/1 is H
            step = None
    elif m := _TILDE.fullmatch(item):
        default_low, default_high = _HASH_LIMITS[name] if name == "day-of-week" else _LIMITS[name]
        low = int(m[1]) if m[1] else default_low
        high = int(m[2]) if m[2] else default_high
        if low > high:
            raise bad("the first number must not be above the second")
    elif item[:1] in ("H", "h") or "~" in item:  # no month or weekday name starts with H
        raise bad("a hashed value is a list item of its own: H, H(a-b), H/n, H(a-b)/n or a~b")
    else:
        return None
    if name == "year":
        raise bad("hashed values are not supported in the year field")
    lowest, highest = _LIMITS[name]
    if not (lowest <= low <= highest and lowest <= high <= highest):
        raise bad(f"out of range {lowest}-{highest}")
    if low <= high:
        values = list(range(low, high + 1))
    elif name == "hour":  # Jenkins: H(22-2) runs from the evening into the morning
        values = [*range(low, 24), *range(0, high + 1)]
    else:
        raise bad("the range must not run backwards (only hours wrap)")
    if step is None:
        return _Hashed(tuple((v,) for v in values))
    if not 1 <= step <= len(values):
        raise bad(f"the step must be between 1 and {len(values)}")
    return _Hashed(tuple(tuple(values[offset::step]) for offset in range(step)), periodic=True)


def _resolve(
    fields: tuple[str, ...], hashed: tuple[tuple[int, int, _Hashed], ...], values: dict[int, int]
) -> tuple[str, ...]:
    """The fields with each hashed item replaced by the values ``values[field]`` picks."""
    items = [value.split(",") for value in fields]
    for i, j, hashed_item in hashed:
        chosen = hashed_item.choices[values[i] % len(hashed_item.choices)]
        items[i][j] = ",".join(str(v) for v in chosen)
    return tuple(",".join(parts) for parts in items)


@lru_cache(maxsize=1024)
def _fires_for_every_seed(fields: tuple[str, ...]) -> None:
    """Refuse an expression that some job's hashed values would leave unable to fire, so
    that validating without a seed (a job not yet created) is the whole verdict.

    Only the date fields matter, and every distinct value they can take is tried. When
    that is too many, a smaller question comes first: a field's days only grow with each
    list item, so if every job fires with each date field cut down to its plain items and
    one of its hashed items, every job fires with all of them.
    """
    try:
        failing = _never_firing_values(fields)
    except _TooManyCombinations:
        names = _FIELD_NAMES[len(fields)]
        for rank in range(3):
            reduced = tuple(
                _one_hashed(names[i], value, rank) if names[i] in _DATE_FIELDS else value
                for i, value in enumerate(fields)
            )
            try:
                if _never_firing_values(reduced) is None:
                    return
            except _TooManyCombinations:
                pass
        raise ScheduleError(
            "cron expression has too many hashed combinations in its date fields to "
            "validate; use fewer H values there"
        ) from None
    if failing is not None:
        raise ScheduleError(
            f"cron expression can never fire for a job whose hashed values are {failing}; "
            "narrow the H range so that every job can fire"
        )


class _TooManyCombinations(Exception):
    pass


def _never_firing_values(fields: tuple[str, ...]) -> str | None:
    """The hashed date-field values (as text) with which no date matches, or None."""
    names = _FIELD_NAMES[len(fields)]
    hashed = _hashed_items(fields)
    zeros = dict.fromkeys(range(len(fields)), 0)
    base = _resolve(fields, hashed, zeros)
    variants: dict[int, list[str]] = {}
    for i in sorted({i for i, _, _ in hashed if names[i] in _DATE_FIELDS}):
        period = math.lcm(*(len(h.choices) for k, _, h in hashed if k == i))
        if period > _MAX_HASH_COMBINATIONS:
            raise _TooManyCombinations
        texts = (_resolve(fields, hashed, {**zeros, i: r})[i] for r in range(period))
        variants[i] = list(dict.fromkeys(texts))
    if math.prod(len(v) for v in variants.values()) > _MAX_HASH_COMBINATIONS:
        raise _TooManyCombinations
    for combination in itertools.product(*variants.values()):
        resolved = list(base)
        for i, text in zip(variants, combination, strict=True):
            resolved[i] = text
        rule = _day_rule(dict(zip(names, _normalize(tuple(resolved)), strict=True)))
        if _next_day(rule, _first_search_day(rule)) is None:
            return ", ".join(
                f"{names[i]} {text}" for i, text in zip(variants, combination, strict=True)
            )
    return None


def _one_hashed(name: str, value: str, rank: int) -> str:
    """``value`` without its hashed items but one: the one with the fewest values, or the
    next (``rank``)."""
    items = value.split(",")
    hashed = sorted((len(h.choices), j) for j, item in enumerate(items)
                    if (h := _hashed_item(name, value, item)) is not None)
    if len(hashed) < 2:
        return value
    keep = hashed[min(rank, len(hashed) - 1)][1]
    dropped = {j for _, j in hashed} - {keep}
    return ",".join(item for j, item in enumerate(items) if j not in dropped)


@lru_cache(maxsize=4096)
def _compile(fields: tuple[str, ...]) -> tuple[str, _DayRule | None]:
    """(what croniter evaluates, day rule) for fields without hashed values."""
    names = _FIELD_NAMES[len(fields)]
    fields = _normalize(fields)
    by_name = dict(zip(names, fields, strict=True))
    dom = by_name["day-of-month"]
    for item in dom.split(","):
        if "W" in item.upper() and not (
            _NEAREST_WEEKDAY.fullmatch(item) or _LAST_DAY.fullmatch(item)
        ):
            raise _field_error("day-of-month", dom, item, "'W' takes one day, e.g. 15W or LW")
    if "year" not in by_name and not _has_day_forms(
        by_name["day-of-month"], by_name["day-of-week"]
    ):
        expr = " ".join(fields)
        try:
            _croniter(expr)
        except _CRON_FAILURES as exc:
            raise ScheduleError(_explain_cron_error(list(fields), names, exc)) from None
        try:
            _croniter(expr, max_years=_NEVER_FIRES_YEARS).get_next(
                datetime, start_time=_NEVER_FIRES_FROM
            )
        except _CRON_FAILURES:
            raise ScheduleError("cron expression can never fire") from None
        return expr, None
    time_fields = list(fields[: names.index("day-of-month")])
    expr = " ".join([*time_fields, "*", "*", "*"])
    try:
        _croniter(expr)
    except _CRON_FAILURES as exc:
        time_names = _FIELD_NAMES[len(time_fields) + 3]
        raise ScheduleError(
            _explain_cron_error([*time_fields, "*", "*", "*"], time_names, exc)
        ) from None
    rule = _day_rule(by_name)
    if _next_day(rule, _first_search_day(rule)) is None:
        raise ScheduleError("cron expression can never fire")
    return expr, rule


def _has_day_forms(dom: str, dow: str) -> bool:
    return any(
        _LAST_DAY.fullmatch(item) or _NEAREST_WEEKDAY.fullmatch(item) for item in dom.split(",")
    ) or any(
        item.upper() == "L" or _NTH_WEEKDAY.fullmatch(item) or _LAST_WEEKDAY.fullmatch(item)
        for item in dow.split(",")
    )


def _day_rule(by_name: dict[str, str]) -> _DayRule:
    """The dates of fields without hashed values; raises naming the field at fault."""
    dom, dow = by_name["day-of-month"], by_name["day-of-week"]
    plain_days: list[str] = []
    last_minus: set[int] = set()
    last_minus_weekday: set[int] = set()
    nearest: set[int] = set()
    for item in dom.split(","):
        if m := _LAST_DAY.fullmatch(item):
            offset = int(m[1] or 0)
            if offset > _MAX_LAST_DAY_OFFSET:
                raise _field_error(
                    "day-of-month", dom, item, f"at most L-{_MAX_LAST_DAY_OFFSET}"
                )
            (last_minus_weekday if m[2] else last_minus).add(offset)
        elif m := _NEAREST_WEEKDAY.fullmatch(item):
            day = int(m[1] or m[2])
            if not 1 <= day <= 31:
                raise _field_error("day-of-month", dom, item, "the day must be 1-31")
            nearest.add(day)
        else:
            plain_days.append(item)
    plain_weekdays: list[str] = []
    nth: set[tuple[int, int]] = set()
    last_of: set[int] = set()
    for item in dow.split(","):
        if item.upper() == "L":  # Quartz: a lone L is the last day of the week
            plain_weekdays.append("6")
        elif m := _NTH_WEEKDAY.fullmatch(item):
            if not 1 <= int(m[2]) <= 5:
                raise _field_error("day-of-week", dow, item, "'#' takes 1 to 5")
            nth.update((d, int(m[2])) for d in _expand("day-of-week", dow, m[1]))
        elif m := _LAST_WEEKDAY.fullmatch(item):
            last_of.update(_expand("day-of-week", dow, m[1] or m[2]))
        else:
            plain_weekdays.append(item)
    years = None
    if "year" in by_name and by_name["year"] != "*":
        year = by_name["year"]
        for item in year.split(","):
            if (m := _YEAR_RANGE.fullmatch(item)) and int(m[1]) > int(m[2]):
                raise _field_error("year", year, item, "the range runs backwards")
        years = _expand("year", year, year)
    return _DayRule(
        days=_expand("day-of-month", dom, ",".join(plain_days)) if plain_days else frozenset(),
        last_minus=frozenset(last_minus),
        last_minus_weekday=frozenset(last_minus_weekday),
        nearest_weekday=frozenset(nearest),
        weekdays=(
            _expand("day-of-week", dow, ",".join(plain_weekdays)) if plain_weekdays
            else frozenset()
        ),
        nth_weekday=frozenset(nth),
        last_weekday=frozenset(last_of),
        either=not (dom.startswith("*") or dow.startswith("*")),
        months=_expand("month", by_name["month"], by_name["month"]),
        years=years,
    )


# croniter's expansion of one field, in a probe expression: (probe, index of the field in
# croniter's expanded list, second at the beginning).
_PROBES = {
    "day-of-month": ("0 0 {} * *", 2, False),
    "month": ("0 0 * {} *", 3, False),
    "day-of-week": ("0 0 * * {}", 4, False),
    "year": ("0 0 0 * * * {}", 6, True),
}


@lru_cache(maxsize=4096)
def _expand(name: str, field_text: str, part: str) -> frozenset[int]:
    """The values croniter gives ``part`` of a field (``field_text`` is the whole field,
    for the error message)."""
    template, index, second_first = _PROBES[name]
    try:
        expanded = croniter.expand(
            template.format(_collapse_single_ranges(part)), second_at_beginning=second_first
        )
    except _CRON_FAILURES as exc:
        raise ScheduleError(
            f"invalid cron {name} field '{field_text}': {_croniter_reason(exc)}"
        ) from None
    values = expanded[0][index]
    lowest, highest = _LIMITS[name]
    if values == ["*"]:
        found = set(range(lowest, highest + 1))
    else:
        found = {v for v in values if isinstance(v, int)}
    return frozenset(v % 7 for v in found) if name == "day-of-week" else frozenset(found)


def _first_search_day(rule: _DayRule) -> date:
    return date(min(rule.years), 1, 1) if rule.years else _NEVER_FIRES_FROM.date()


def _next_day(rule: _DayRule, start: date) -> date | None:
    """The first date on or after ``start`` that ``rule`` fires on, searching as far as
    croniter does (50 years) or to the last year of a year field."""
    year, month, day = start.year, start.month, start.day
    end = max(rule.years) if rule.years else year + _NEVER_FIRES_YEARS
    while year <= end:
        if rule.years is not None and year not in rule.years:
            year, month, day = year + 1, 1, 1
            continue
        if month in rule.months:
            for found in _month_days(rule, year, month):
                if found >= day:
                    return date(year, month, found)
        year, month, day = (year + 1, 1, 1) if month == 12 else (year, month + 1, 1)
    return None


@lru_cache(maxsize=65536)
def _month_days(rule: _DayRule, year: int, month: int) -> tuple[int, ...]:
    """The days of one month that ``rule`` fires on, in order."""
    monday_based, last = calendar.monthrange(year, month)
    first = (monday_based + 1) % 7  # cron weekday of the 1st

    def weekday(day: int) -> int:
        return (first + day - 1) % 7

    def nearest_weekday(day: int) -> int:
        """Quartz's ``W``: Saturday -> Friday, Sunday -> Monday, never leaving the month
        (a Saturday 1st -> Monday the 3rd, a Sunday last day -> Friday)."""
        if weekday(day) == 6:
            return day + 2 if day == 1 else day - 1
        if weekday(day) == 0:
            return day - 2 if day == last else day + 1
        return day

    by_date = {d for d in rule.days if d <= last}
    by_date.update(last - n for n in rule.last_minus if last - n >= 1)
    by_date.update(nearest_weekday(last - n) for n in rule.last_minus_weekday if last - n >= 1)
    by_date.update(nearest_weekday(d) for d in rule.nearest_weekday if d <= last)
    by_weekday = {d for d in range(1, last + 1) if weekday(d) in rule.weekdays}
    for wd, n in rule.nth_weekday:
        day = 1 + (wd - first) % 7 + 7 * (n - 1)
        if day <= last:
            by_weekday.add(day)
    by_weekday.update(last - (weekday(last) - wd) % 7 for wd in rule.last_weekday)
    return tuple(sorted(by_date | by_weekday if rule.either else by_date & by_weekday))


def _normalize(fields: tuple[str, ...]) -> tuple[str, ...]:
    """Spell out what croniter gets wrong: a one-value range 'a-a' (croniter widens it to
    the whole field, "Jan-Jan is the whole cycle"; in cron it is the single value a) and a
    stepped range that wraps ('22-2/2': croniter breaks the step at the wrap)."""
    names = _FIELD_NAMES[len(fields)]
    return tuple(
        _collapse_single_ranges(_unwrap_stepped_ranges(name, value))
        for name, value in zip(names, fields, strict=True)
    )


_STEPPED_RANGE = re.compile(r"([0-9A-Za-z]+)-([0-9A-Za-z]+)/(\d+)")
#: Fields whose ranges may wrap (Quartz: "NOV-FEB", "22-2"), and the cycle they wrap in.
_CYCLES = {
    "second": (0, 60),
    "minute": (0, 60),
    "hour": (0, 24),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (0, 7),
}


def _unwrap_stepped_ranges(name: str, value: str) -> str:
    """'22-4/3' in hours -> '22,1,4': Quartz's wrapped range, whose step runs on across
    the end of the cycle."""
    if name not in _CYCLES:
        return value
    first, size = _CYCLES[name]
    items = []
    for item in value.split(","):
        m = _STEPPED_RANGE.fullmatch(item)
        if m:
            low, high = _single_value(name, m[1]), _single_value(name, m[2])
            step = int(m[3])
            if low is not None and high is not None and low > high and step > 0:
                spelled = {(v - first) % size + first for v in range(low, high + size + 1, step)}
                item = ",".join(str(v) for v in sorted(spelled))
        items.append(item)
    return ",".join(items)


def _single_value(name: str, token: str) -> int | None:
    """A number or a month/weekday name as a number (None when it is neither)."""
    if token.isdigit():
        return int(token)
    if name not in ("month", "day-of-week"):
        return None
    try:
        values = _expand(name, token, token)
    except ScheduleError:
        return None
    return next(iter(values)) if len(values) == 1 else None


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


def _wall_next_day(expr: str, days: _DayRule, wall: datetime) -> datetime | None:
    """First wall-clock time strictly after ``wall`` on a date of ``days`` whose time of day
    matches ``expr`` (whose day fields are all ``*``, so it matches on every date)."""
    start = wall.date()
    while True:
        day = _next_day(days, start)
        if day is None:
            return None
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        found = _wall_next(expr, max(wall, midnight - _ONE_US))
        if found is None or found.date() == day:
            return found
        start = day + timedelta(days=1)  # no time of day left on ``day`` after ``wall``


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
    if _is_fixed_offset(zone.key):
        return True  # no offset changes at all
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
    expr, days = schedule._cron, schedule._days
    assert expr is not None
    if schedule.needs_seed:
        raise ValueError(
            f"schedule '{schedule.expression}' has hashed values: parse it with the job's id "
            "as seed to get its fire times"
        )
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
            wall = _wall_next(expr, wall_after) if days is None else _wall_next_day(
                expr, days, wall_after
            )
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
