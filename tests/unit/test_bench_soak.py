"""The soak benchmark's arithmetic: its kill plan, memory verdicts, fire accounting,
windows and the leader's histograms (jobsched_dev/bench/soak_analysis.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from jobsched_dev.bench.soak import scheduler_metrics
from jobsched_dev.bench.soak_analysis import (
    LEADER_SIGTERM,
    WORKER_KILL,
    Histogram,
    JobFires,
    account_fires,
    expected_fires,
    explained_fires,
    kill_plan,
    memory_trend,
    next_multiple_after,
    periodic_work,
    slope_per_h,
    term_trend,
    window_rows,
    windowed,
)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_kills_alternate_half_a_period_apart_and_stop_before_the_end() -> None:
    assert kill_plan(10, 3) == [(90, WORKER_KILL), (180, LEADER_SIGTERM),
                                (270, WORKER_KILL), (360, LEADER_SIGTERM),
                                (450, WORKER_KILL), (540, LEADER_SIGTERM)]
    assert kill_plan(0.5, 0.2) == [(6, WORKER_KILL), (12, LEADER_SIGTERM),
                                   (18, WORKER_KILL), (24, LEADER_SIGTERM)]
    assert kill_plan(20, 0) == []
    assert kill_plan(5, 5) == [(150, WORKER_KILL)]  # the SIGTERM would fall at the end


def test_slope_is_per_hour() -> None:
    assert slope_per_h([(0, 100), (1800, 110), (3600, 120)]) == 20
    assert slope_per_h([(0, 1), (10, 1)]) is None  # too few points


def _rss(minutes: float, per_h: list[float], start: float = 100.0) -> list[tuple[float, float]]:
    """Samples every 10 s; the growth rate changes piecewise, evenly over ``per_h``."""
    points, value, n = [], start, int(minutes * 6)
    for i in range(n):
        points.append((i * 10.0, value))
        value += per_h[i * len(per_h) // n] / 360
    return points


def test_memory_verdicts() -> None:
    flat = memory_trend(_rss(30, [1]), warmup_s=120)
    assert flat["verdict"] == "flat" and abs(flat["slope_mb_per_h"] - 1) < 0.01
    grows = memory_trend(_rss(30, [40]), warmup_s=120)
    assert grows["verdict"] == "grows" and not grows["levels_off"]
    assert abs(grows["slope_mb_per_h"] - 40) < 0.1
    levelling = memory_trend(_rss(30, [60, 60, 0]), warmup_s=120)
    assert levelling["verdict"] == "levels off" and levelling["levels_off"]
    assert levelling["last_third_mb_per_h"] < 5 < levelling["first_two_thirds_mb_per_h"]
    short = memory_trend(_rss(2.5, [40]), warmup_s=120)
    assert short["verdict"] == "too short" and short["slope_mb_per_h"] is None
    assert short["rss_start_mb"] == 100
    # slopes from a few minutes are shown, but judged only over 5 minutes or more
    brief = memory_trend(_rss(6, [40]), warmup_s=120)
    assert brief["verdict"] == "too short" and brief["levels_off"] is None
    assert abs(brief["slope_mb_per_h"] - 40) < 0.1


def test_memory_trend_leaves_out_the_warmup() -> None:
    points = [(0.0, 50.0), (60.0, 90.0)] + [(120.0 + 10 * i, 100.0) for i in range(20)]
    trend = memory_trend(points, warmup_s=120)
    assert trend["slope_mb_per_h"] == 0 and trend["rss_start_mb"] == 50


def test_a_take_over_step_is_judged_from_the_start_of_the_term() -> None:
    # A standby flat at 70 MB for 3 min takes over: 8 MB in its first minute as leader
    # (pool, statements, the interregnum's backlog), flat for the 8 min after.
    points = [(10.0 * i, 70.0) for i in range(18)]
    points += [(180.0 + 10 * i, 70.0 + 8 * i / 6) for i in range(6)]
    points += [(240.0 + 10 * i, 78.0) for i in range(48)]
    whole = memory_trend(points, warmup_s=120)
    assert whole["verdict"] in ("grows", "levels off") and whole["slope_mb_per_h"] > 30
    term = term_trend(points, led_from_s=180.0, warmup_s=120)
    assert term["verdict"] == "flat" and term["rss_start_mb"] == 70.0
    assert term["slope_mb_per_h"] == 0
    # growth that goes on through the term is still growth
    growing = points[:24] + [(240.0 + 10 * i, 78.0 + 40 * i / 360) for i in range(48)]
    assert term_trend(growing, led_from_s=180.0, warmup_s=120)["verdict"] == "grows"


def test_reasons_explain_the_fires_they_stand_for() -> None:
    assert explained_fires(None) == 0
    assert explained_fires("coalesced 3 later missed fires (misfire=run_once)") == 3
    assert explained_fires("coalesced more than 1000 later missed fires (misfire=run_once)") \
        == 1000
    assert explained_fires("4 fires later than 5s not run (misfire=skip)") == 3
    assert explained_fires("7 fires beyond max_catchup=10") == 6
    assert explained_fires("its worker was lost 3 times (lease lapsed); not retried") == 0


def test_expected_fires_from_the_first_period_after_creation() -> None:
    created = T0 + timedelta(milliseconds=300)
    assert next_multiple_after(created, 1) == T0 + timedelta(seconds=1)
    assert next_multiple_after(created, 5) == T0 + timedelta(seconds=5)
    assert next_multiple_after(T0, 5) == T0 + timedelta(seconds=5)
    first = T0 + timedelta(seconds=1)
    assert expected_fires(first, T0 + timedelta(seconds=4), 1) == 3  # 1, 2, 3
    assert expected_fires(first, T0 + timedelta(seconds=4.5), 1) == 4
    assert expected_fires(T0 + timedelta(seconds=5), T0 + timedelta(seconds=20), 5) == 3


def test_fire_accounting_finds_only_unexplained_gaps() -> None:
    cutoff = T0 + timedelta(seconds=61)  # fires at 1..60 s are due
    complete = JobFires("python-sync", 1, T0, T0 + timedelta(seconds=1), 60, {})
    # 10 fires late past the threshold: one run coalesced the other 9
    coalesced = JobFires("http", 1, T0, T0 + timedelta(seconds=1), 51,
                         {"coalesced 9 later missed fires (misfire=run_once)": 1})
    gap = JobFires("shell", 1, T0, T0 + timedelta(seconds=1), 58, {})
    # the api's clock ran a moment ahead of the row's created_at: the first fire is earlier
    early = JobFires("python-async", 1, T0 + timedelta(seconds=1, milliseconds=2),
                     T0 + timedelta(seconds=1), 60, {})
    every_5 = JobFires("shell-5s", 5, T0, T0 + timedelta(seconds=5), 12, {})
    result = account_fires([complete, coalesced, gap, early, every_5], cutoff)
    assert result["by_kind"]["http"] == {"jobs": 1, "expected": 60, "executions": 51,
                                         "explained_by_reason": 9, "unexplained": 0}
    assert result["by_kind"]["shell"]["unexplained"] == 2
    assert result["by_kind"]["python-async"]["unexplained"] == 0
    assert result["by_kind"]["shell-5s"]["expected"] == 12
    assert result["unexplained"] == 2 and result["jobs"] == 5


def test_windows_carry_their_events() -> None:
    by_window = windowed([(1.0, 0.010), (29.0, 0.030), (31.0, 0.200), (-0.5, 0.001)], 30)
    assert by_window == {0: [0.010, 0.030, 0.001], 1: [0.200]}
    rows = window_rows(by_window, 30, [(40.0, "worker kill -9 worker-1")])
    assert rows[0]["from_s"] == 0 and rows[0]["max"] == 30 and rows[0]["events"] == []
    assert rows[1]["p99"] == 200 and rows[1]["events"] == ["worker kill -9 worker-1"]


def test_histogram_deltas_and_quantile_bounds() -> None:
    before = Histogram(((0.01, 5), (0.1, 8), (math.inf, 8)), 8, 0.2)
    after = Histogram(((0.01, 95), (0.1, 99), (math.inf, 100)), 100, 2.0)
    delta = after.minus(before)
    assert delta is not None and delta.count == 92 and math.isclose(delta.total, 1.8)
    assert delta.quantile_bound(0.5) == 0.01 and delta.quantile_bound(0.99) == math.inf
    assert before.minus(after) is None  # counts went back: a restart, not a delta
    assert math.isnan(Histogram().mean)


def test_periodic_work_compares_the_first_and_last_thirds() -> None:
    def interval(t: float, history: int, tick_s: float, passes: int) -> dict[str, object]:
        return {"t": t, "history": history,
                "tick": Histogram(((0.01, 10), (math.inf, 10)), 10, 10 * tick_s),
                "retention": Histogram(((0.01, passes),), passes, passes * tick_s)}

    intervals = [interval(10.0 * i, 1000 * (i + 1), 0.004 if i < 3 else 0.008, i % 2)
                 for i in range(9)]
    work = periodic_work(intervals)
    first, last = work["thirds"][0], work["thirds"][2]
    assert first["ticks"] == 30 and math.isclose(first["tick_mean_ms"], 4)
    assert math.isclose(last["tick_mean_ms"], 8) and math.isclose(work["tick_mean_ratio"], 2)
    assert math.isclose(work["history_ratio"], 8000 / 2000)
    assert first["retention_passes"] == 1 and math.isclose(first["retention_slowest_ms"], 4)


def test_scheduler_metrics_are_read_from_the_prometheus_text() -> None:
    text = "\n".join([
        "# TYPE jobsched_scheduler_is_leader gauge", "jobsched_scheduler_is_leader 1",
        "# TYPE jobsched_scheduler_leader_epoch gauge",
        "jobsched_scheduler_leader_epoch 7",
        "# TYPE jobsched_scheduler_takeovers_total counter",
        "jobsched_scheduler_takeovers_total 3",
        "# TYPE jobsched_scheduler_tick_duration_seconds histogram",
        'jobsched_scheduler_tick_duration_seconds_bucket{le="0.01"} 3.0',
        'jobsched_scheduler_tick_duration_seconds_bucket{le="+Inf"} 4.0',
        "jobsched_scheduler_tick_duration_seconds_count 4.0",
        "jobsched_scheduler_tick_duration_seconds_sum 0.5",
        "# TYPE jobsched_scheduler_retention_seconds histogram", ""])
    scraped = scheduler_metrics(text)
    assert scraped["leader"] and scraped["epoch"] == 7 and scraped["terms"] == 3
    assert scraped["tick"] == Histogram(((0.01, 3.0), (math.inf, 4.0)), 4.0, 0.5)
    assert scraped["retention"] == Histogram()
