"""The soak's arithmetic, apart from the run so that it can be tested without one: the kill
plan, memory trends, fire accounting, 30-second windows and the leader's histograms.

Everything here is pure: times are seconds since the load began (or datetimes from
PostgreSQL), and nothing reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobsched_dev.bench.stats import distribution_ms

#: A process whose RSS moves less than this (MB per hour, least squares) is flat. The leader
#: of issue 21 grew 30-57 MB/h; the noise of a role's RSS over a few minutes of 10-second
#: samples is a few MB/h.
FLAT_MB_PER_H = 5.0
#: A verdict needs this much of a process's life after its warm-up: a slope over a few
#: minutes extrapolates a few MB of warming caches to tens of MB/h.
TREND_SPAN_S = 300.0

WORKER_KILL = "worker kill -9"
LEADER_SIGTERM = "leader SIGTERM"


def kill_plan(minutes: float, kill_every_min: float) -> list[tuple[float, str]]:
    """(seconds after the load began, what) for the run: a worker ``kill -9`` half a period
    in, then a leader SIGTERM each full period, so the two never overlap; none at or after
    the end, none with ``kill_every_min`` 0."""
    if kill_every_min <= 0:
        return []
    period, end = kill_every_min * 60, minutes * 60
    plan: list[tuple[float, str]] = []
    n = 0
    while True:
        worker_at, leader_at = (n + 0.5) * period, (n + 1) * period
        if worker_at >= end:
            return plan
        plan.append((worker_at, WORKER_KILL))
        if leader_at >= end:
            return plan
        plan.append((leader_at, LEADER_SIGTERM))
        n += 1


# -- memory -----------------------------------------------------------------------------

def slope_per_h(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def memory_trend(points: Sequence[tuple[float, float]], warmup_s: float,
                 flat_mb_per_h: float = FLAT_MB_PER_H,
                 span_s: float = TREND_SPAN_S) -> dict[str, Any]:
    """RSS (seconds, MB) samples of one process → its start and end RSS, the slope in MB/h
    over the samples after ``warmup_s`` of its life, and whether it levels off: the slope
    of the last third against that of the first two thirds.

    verdict: ``flat`` (slope within ``flat_mb_per_h``), ``levels off`` (the last third is
    flat, or grows at most half as fast as the first two thirds), ``grows``, or ``too
    short`` (under ``span_s`` of samples after the warm-up: the slopes are still given
    from 6 samples on, but no verdict)."""
    out: dict[str, Any] = {
        "rss_start_mb": points[0][1] if points else None,
        "rss_end_mb": points[-1][1] if points else None,
        "rss_max_mb": max(v for _, v in points) if points else None,
        "samples": len(points), "slope_mb_per_h": None, "first_two_thirds_mb_per_h": None,
        "last_third_mb_per_h": None, "levels_off": None, "verdict": "too short"}
    if not points:
        return out
    born = points[0][0]
    steady = [p for p in points if p[0] - born >= warmup_s]
    if len(steady) < 6:
        return out
    cut = len(steady) * 2 // 3
    whole, first, last = slope_per_h(steady), slope_per_h(steady[:cut]), \
        slope_per_h(steady[cut - 1:])
    assert whole is not None and first is not None and last is not None
    levels_off = last <= flat_mb_per_h or last <= first / 2
    out.update(slope_mb_per_h=whole, first_two_thirds_mb_per_h=first,
               last_third_mb_per_h=last)
    if steady[-1][0] - steady[0][0] >= span_s:
        out.update(levels_off=levels_off,
                   verdict="flat" if abs(whole) <= flat_mb_per_h
                   else "levels off" if levels_off else "grows")
    return out


def term_trend(points: Sequence[tuple[float, float]], led_from_s: float,
               warmup_s: float) -> dict[str, Any]:
    """``memory_trend`` of a scheduler over its leadership term alone, its warm-up counted
    from the take-over: leading is a second start-up (the pool opens its connections, the
    statements are prepared, the outbox is re-published at once, the backlog of the
    interregnum is fired), so a standby that takes over after its own warm-up shows that
    one-time step as a slope over its whole life."""
    return memory_trend([p for p in points if p[0] >= led_from_s], warmup_s)


# -- fires ------------------------------------------------------------------------------

_COALESCED = re.compile(r"^coalesced (?:more than )?(\d+) ")
_COUNTED = re.compile(r"^(?:more than )?(\d+) fires")


def explained_fires(reason: str | None) -> int:
    """How many fires of the job an execution's reason accounts for besides the execution
    itself: ``coalesced N later missed fires`` (misfire=run_once) absorbed N more; ``N
    fires beyond max_catchup`` / ``N fires later than … (misfire=skip)`` / ``N fires
    skipped while paused`` count themselves among the N."""
    if not reason:
        return 0
    if match := _COALESCED.match(reason):
        return int(match[1])
    if match := _COUNTED.match(reason):
        return max(0, int(match[1]) - 1)
    return 0


def next_multiple_after(at: datetime, period_s: int) -> datetime:
    """The first whole multiple of ``period_s`` seconds (since the epoch) after ``at``:
    where a ``*/period_s * * * * *`` schedule created at ``at`` fires first (for periods
    dividing 60)."""
    return datetime.fromtimestamp(math.floor(at.timestamp() / period_s) * period_s + period_s,
                                  UTC)


def expected_fires(first: datetime, cutoff: datetime, period_s: int) -> int:
    """Fires of a job firing every ``period_s`` seconds from ``first`` due before ``cutoff``."""
    span = (cutoff - first).total_seconds()
    return max(0, math.ceil(span / period_s - 1e-9))


@dataclass(frozen=True)
class JobFires:
    """One periodic job as read back: when it was created, its first recorded fire, how
    many fires it recorded before the cutoff and the reasons they carry."""

    kind: str
    period_s: int
    created_at: datetime
    first_fire: datetime | None
    fires: int
    reasons: Mapping[str, int]  # reason -> executions carrying it


def account_fires(jobs: Iterable[JobFires], cutoff: datetime) -> dict[str, Any]:
    """Every fire due before ``cutoff`` of each periodic job is an execution, or is
    explained by the reason of one (coalesced, missed, skipped); the rest are missing.
    A job's first due fire is its first recorded one, or the first whole period after its
    creation if none was recorded that early (the api computed it a moment before the row
    was stamped)."""
    by_kind: dict[str, dict[str, int]] = {}
    for job in jobs:
        first = next_multiple_after(job.created_at, job.period_s)
        if job.first_fire is not None and job.first_fire < first:
            first = job.first_fire
        expected = expected_fires(first, cutoff, job.period_s)
        explained = sum(explained_fires(reason) * n for reason, n in job.reasons.items())
        row = by_kind.setdefault(job.kind, {"jobs": 0, "expected": 0, "executions": 0,
                                            "explained_by_reason": 0, "unexplained": 0})
        row["jobs"] += 1
        row["expected"] += expected
        row["executions"] += job.fires
        row["explained_by_reason"] += explained
        row["unexplained"] += max(0, expected - job.fires - explained)
    totals = {key: sum(row[key] for row in by_kind.values())
              for key in ("jobs", "expected", "executions", "explained_by_reason",
                          "unexplained")}
    return {**totals, "by_kind": by_kind}


# -- windows ----------------------------------------------------------------------------

def windowed(samples: Iterable[tuple[float, float]], window_s: float,
             ) -> dict[int, list[float]]:
    """(seconds since the load began, value) → values by window index."""
    out: dict[int, list[float]] = {}
    for t, value in samples:
        out.setdefault(max(0, int(t // window_s)), []).append(value)
    return out


def window_rows(by_window: Mapping[int, Sequence[float]], window_s: float,
                events: Sequence[tuple[float, str]] = ()) -> list[dict[str, Any]]:
    """One row per window: its start, p50/p99/max in ms, n, and what was killed in it."""
    rows = []
    for index in sorted(by_window):
        start = index * window_s
        row: dict[str, Any] = {"from_s": start, **distribution_ms(by_window[index])}
        row["events"] = [what for at, what in events if start <= at < start + window_s]
        rows.append(row)
    return rows


# -- the leader's histograms ------------------------------------------------------------

@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram as scraped: cumulative counts by upper bound, count, sum."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    total: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram | None:
        """What was observed between ``earlier`` and this scrape of the same process; None
        if the counts went back (another process, or a restart)."""
        if self.count < earlier.count:
            return None
        before = dict(earlier.buckets)
        return Histogram(tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
                         self.count - earlier.count, self.total - earlier.total)

    def plus(self, other: Histogram) -> Histogram:
        theirs = dict(other.buckets)
        mine = dict(self.buckets)
        bounds = sorted(set(mine) | set(theirs))
        return Histogram(tuple((le, mine.get(le, 0.0) + theirs.get(le, 0.0)) for le in bounds),
                         self.count + other.count, self.total + other.total)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (an upper estimate)."""
        if not self.count:
            return math.nan
        rank = q * self.count
        for le, n in sorted(self.buckets):
            if n >= rank:
                return le
        return math.inf


def thirds(samples: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The samples split in three runs of consecutive samples (first, middle, last)."""
    n = len(samples)
    return [list(samples[: n // 3]), list(samples[n // 3: 2 * n // 3]),
            list(samples[2 * n // 3:])]


def periodic_work(intervals: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The leader's periodic work over the run, first third against last: ``intervals``
    are the sampling intervals in order, each with ``history`` (executions rows at its
    end), ``tick`` and ``retention`` (Histogram of that interval, or None where the
    leader changed). Returns per third the history size, the tick's mean and p99 bound,
    the retention passes and their mean and slowest, and the last/first ratios."""
    parts = []
    for part in thirds(intervals):
        tick, retention = Histogram(), Histogram()
        slowest = math.nan
        for interval in part:
            if interval.get("tick") is not None:
                tick = tick.plus(interval["tick"])
            passes = interval.get("retention")
            if passes is not None and passes.count:
                retention = retention.plus(passes)
                mean = passes.mean
                slowest = mean if math.isnan(slowest) else max(slowest, mean)
        history = [i["history"] for i in part if i.get("history") is not None]
        parts.append({
            "from_s": part[0]["t"] if part else math.nan,
            "history_rows": sum(history) / len(history) if history else math.nan,
            "ticks": int(tick.count), "tick_mean_ms": tick.mean * 1000,
            "tick_p99_bound_ms": tick.quantile_bound(0.99) * 1000,
            "retention_passes": int(retention.count),
            "retention_mean_ms": retention.mean * 1000,
            # A pass per interval at most (60 s apart, sampled every 10 s): its mean is the pass.
            "retention_slowest_ms": slowest * 1000,
        })

    def ratio(key: str) -> float:
        first, last = parts[0][key], parts[-1][key]
        if not first or math.isnan(first) or math.isnan(last):
            return math.nan
        return float(last / first)

    return {"thirds": parts, "history_ratio": ratio("history_rows"),
            "tick_mean_ratio": ratio("tick_mean_ms"),
            "retention_mean_ratio": ratio("retention_mean_ms")}
