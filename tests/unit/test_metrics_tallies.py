"""The worker's per-run metrics go through Tally and Observer (cheaper than aioprometheus's
per-call label handling); what a scrape shows must be what the plain calls would show."""

from __future__ import annotations

from aioprometheus import render

from jobsched.domain.priority import Priority
from jobsched.metrics import Metrics


def _scrape(metrics: Metrics) -> dict[str, float]:
    metrics.flush()
    body, _ = render(metrics.registry, [])
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_a_tally_reaches_the_counter_when_flushed() -> None:
    metrics = Metrics("worker", "w1")
    for _ in range(3):
        metrics.runs.inc("python", "succeeded")
    metrics.runs.inc("shell", "failed")
    assert len(metrics.executions.values) == 0  # nothing reaches it before the flush
    values = _scrape(metrics)
    assert values['jobsched_worker_executions_total{kind="python",outcome="succeeded"}'] == 3
    assert values['jobsched_worker_executions_total{kind="shell",outcome="failed"}'] == 1
    metrics.runs.inc("python", "succeeded")
    assert _scrape(metrics)[
        'jobsched_worker_executions_total{kind="python",outcome="succeeded"}'] == 4


def test_an_observer_matches_the_histograms_own_observe() -> None:
    ours, plain = Metrics("worker", "a"), Metrics("worker", "b")
    samples = [(Priority.HIGH, 0.002), (Priority.NORMAL, 0.3), (Priority.HIGH, 7.0),
               (Priority.NORMAL, 0.0)]
    for band, seconds in samples:
        ours.run_lateness.observe(seconds, band)
        plain.start_lateness.observe({"priority": band}, seconds)
    mine = {k: v for k, v in _scrape(ours).items() if "start_lateness" in k}
    theirs = {k: v for k, v in _scrape(plain).items() if "start_lateness" in k}
    assert mine == theirs
    assert mine['jobsched_worker_start_lateness_seconds_count{priority="high"}'] == 2


def test_the_api_metrics_by_route_method_and_status() -> None:
    metrics = Metrics("api", "a")
    for status in ("201", "201", "422"):
        metrics.api_responses.inc("/api/v1/jobs", "POST", status)
        metrics.api_timings.observe(0.004, "/api/v1/jobs", "POST")
    metrics.api_timings.observe(0.2, "/api/v1/jobs/{id}", "GET")
    values = _scrape(metrics)
    requests = "jobsched_api_requests_total"
    assert values[f'{requests}{{method="POST",route="/api/v1/jobs",status="201"}}'] == 2
    assert values[f'{requests}{{method="POST",route="/api/v1/jobs",status="422"}}'] == 1
    timings = "jobsched_api_request_duration_seconds"
    assert values[f'{timings}_count{{method="POST",route="/api/v1/jobs"}}'] == 3
    assert values[f'{timings}_bucket{{le="0.005",method="POST",route="/api/v1/jobs"}}'] == 3
    assert values[f'{timings}_count{{method="GET",route="/api/v1/jobs/{{id}}"}}'] == 1
