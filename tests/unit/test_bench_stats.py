"""The benchmark's arithmetic: percentiles, medians of runs, tables, /proc reading."""

from __future__ import annotations

import math
import os

from jobsched_dev.bench.procstat import CpuMeter, read_times
from jobsched_dev.bench.stats import distribution_ms, median_of_runs, percentile, table


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def test_distribution_is_in_milliseconds() -> None:
    dist = distribution_ms([0.001, 0.002, 0.010])
    assert dist["p50"] == 2.0 and dist["max"] == 10.0 and dist["n"] == 3


def test_median_of_runs_is_elementwise_and_keeps_labels() -> None:
    runs = [{"mode": "a", "rate": 1.0, "steps": [{"x": 1}, {"x": 9}], "ok": True},
            {"mode": "a", "rate": 3.0, "steps": [{"x": 3}], "ok": False},
            {"mode": "a", "rate": 2.0, "steps": [{"x": 2}], "ok": True}]
    median = median_of_runs(runs)
    assert median == {"mode": "a", "rate": 2.0, "steps": [{"x": 2}, {"x": 9}], "ok": True}


def test_table_aligns_columns() -> None:
    text = table(("name", "value"), [["a", 1234.5], ["bb", float("nan")]])
    lines = text.splitlines()
    assert lines[0].startswith("name") and "1,234.5" in lines[2] and lines[3].endswith("-")
    assert len({len(line) for line in lines}) == 1


def test_cpu_of_this_process_is_read_from_proc() -> None:
    times = read_times(os.getpid())
    assert times is not None and times.cpu_s > 0 and times.rss_mb > 1
    meter = CpuMeter()
    meter.add("me", os.getpid())
    meter.start()
    sum(i * i for i in range(200_000))
    meter.stop()
    report = meter.report()
    assert report["me"]["cpu_s"] >= 0 and "postgresql" in report
    assert read_times(2**22 + 12345) is None
