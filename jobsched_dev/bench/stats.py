"""Percentiles, medians of repeated runs and the plain-text tables the scenarios print."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

PERCENTILES = (50, 95, 99)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def distribution_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max (and n) in milliseconds of a list of durations in seconds."""
    ordered = sorted(seconds)
    out: dict[str, float] = {f"p{p}": percentile(ordered, p) * 1000 for p in PERCENTILES}
    out["max"] = ordered[-1] * 1000 if ordered else math.nan
    out["n"] = len(ordered)
    return out


def median_of_runs(runs: Sequence[Any]) -> Any:
    """The element-wise median of several results of the same shape (dicts of numbers).

    Strings and other non-numbers are taken from the first run.
    """
    first = runs[0]
    if isinstance(first, list):
        longest = max(len(r) for r in runs)
        return [median_of_runs([r[i] for r in runs if len(r) > i]) for i in range(longest)]
    if isinstance(first, dict):
        return {key: median_of_runs([r[key] for r in runs if key in r]) for key in first}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    values = [v for v in runs if isinstance(v, int | float) and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A right-aligned text table (first column left-aligned)."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                       strict=True)]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def latency_rows(label_to_dist: dict[str, dict[str, float]]) -> list[list[Any]]:
    return [[label, d["p50"], d["p95"], d["p99"], d["max"], int(d["n"])]
            for label, d in label_to_dist.items()]


LATENCY_HEADERS = ("(ms)", "p50", "p95", "p99", "max", "n")


def cpu_table(cpu: dict[str, dict[str, float]]) -> str:
    rows = [[name, v["cpu_s"], v["core_share"] * 100, v["rss_mb"]] for name, v in cpu.items()]
    return table(("process", "CPU s", "% of a core", "RSS MB"), rows)
