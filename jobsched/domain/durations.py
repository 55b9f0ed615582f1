"""Durations as people write them, one grammar for every place that takes one (`@every`,
`jobsched token create --expires-in`):

* bare seconds: ``90``, ``3600``, ``1.5``;
* or ``<number><unit>`` parts summed, Go style: ``30s``, ``15m``, ``1h30m``, ``1.5h``,
  ``1500ms``, ``30d``, ``2w``; units ``ms s m h d w``.

Numbers are unsigned decimals of ASCII digits (``1.5``, not ``.5``, ``1.`` or ``1e3``),
computed exactly; a value
finer than a microsecond is refused rather than rounded. Whitespace around the text is
ignored, inside it is not (``1h 30m`` is refused). Bounds (at least 1 s, more than 0) are
the caller's. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

__all__ = ["HINT", "UNITS", "DurationError", "DurationTooLong", "parse_duration"]

#: Microseconds per unit.
UNITS = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"  # ASCII: \d takes any Unicode digit
_BARE_SECONDS = re.compile(_NUMBER)
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d|w)")
_MAX_US = timedelta.max // timedelta(microseconds=1)
HINT = "use seconds (90, 1.5) or numbers with units ms, s, m, h, d or w, e.g. 30s, 15m, 1h30m"


class DurationError(ValueError):
    """Text that is not a duration; ``str()`` names the text and says what would be."""


class DurationTooLong(DurationError):
    """A duration longer than a timedelta holds (999,999,999 days)."""


def parse_duration(text: str) -> timedelta:
    """The duration ``text`` names (see the module's grammar), or DurationError."""
    stripped = text.strip()
    try:
        total_us = _microseconds(stripped)
    except ValueError:  # a number longer than Python converts (4,300 digits)
        total_us = None
    if total_us is None:
        raise DurationError(f"invalid duration {text!r}; {HINT}")
    if total_us.denominator != 1:
        raise DurationError(f"duration {stripped!r} is finer than a microsecond")
    if total_us > _MAX_US:
        raise DurationTooLong(f"duration {stripped!r} is longer than {timedelta.max.days:,} days")
    return timedelta(microseconds=int(total_us))


def _microseconds(text: str) -> Fraction | None:
    if _BARE_SECONDS.fullmatch(text):
        return Fraction(text) * UNITS["s"]
    pos, total = 0, Fraction(0)
    for part in _PART.finditer(text):
        if part.start() != pos:
            return None
        total += Fraction(part.group(1)) * UNITS[part.group(2)]
        pos = part.end()
    if pos == 0 or pos != len(text):
        return None
    return total
