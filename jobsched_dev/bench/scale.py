"""``jobsched bench scale``: ``lateness`` and ``api`` on an empty database and on one holding
SCHEDULES active schedules (COPYed; none falls due during the run), in the same run, so the
figures compare as ratios. The leader's RSS with the schedules stored is reported too.

With ``--history N`` the scaled database also holds N finished executions (and their
attempts) spread over the last 30 days, and the baseline a small history
(``BASELINE_HISTORY``, so that the history endpoints have something to read): a burn-down
is compared too, the api reads executions (GET /api/v1/executions/{id}) and job histories
(GET /api/v1/jobs/{id}/executions), and a retention pass, run halfway through the lateness
fires, drops the oldest days (timed; the lateness figures include it). Each case's history is
written once, into a template database that its three runs (and every repetition)
copy."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from jobsched_dev.bench.api import run_api
from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import Options
from jobsched_dev.bench.history import history_template
from jobsched_dev.bench.lateness import run_lateness
from jobsched_dev.bench.throughput import burn_down

BASELINE_HISTORY = 60_000  # 60 executions for each of the 1,000 history jobs
BURN_DOWN_JOBS = 5_000


def _pick(result: dict[str, Any], *path: str) -> float:
    value: Any = result
    for key in path:
        value = value[key]
    return float(value)


COMPARED = {
    "due -> started p50 ms": ("lateness", "latency_ms", "scheduled_for -> started", "p50"),
    "due -> started p99 ms": ("lateness", "latency_ms", "scheduled_for -> started", "p99"),
    "due -> published p99 ms": ("lateness", "latency_ms", "scheduled_for -> published", "p99"),
    "missed fires": ("lateness", "missed"),
    "submits/s": ("api", "post", "per_s"),
    "POST p99 ms": ("api", "post", "latency_ms", "p99"),
    "GET/s": ("api", "get", "per_s"),
    "GET p50 ms": ("api", "get", "latency_ms", "p50"),
    "GET p99 ms": ("api", "get", "latency_ms", "p99"),
}

COMPARED_WITH_HISTORY = {
    **COMPARED,
    "GET execution p50 ms": ("api", "get-execution", "latency_ms", "p50"),
    "GET execution p99 ms": ("api", "get-execution", "latency_ms", "p99"),
    "list executions p50 ms": ("api", "list-executions", "latency_ms", "p50"),
    "list executions p99 ms": ("api", "list-executions", "latency_ms", "p99"),
    "burn-down executions/s": ("burn_down", "executions_per_s"),
    "burn-down queued -> started p99 ms": ("burn_down", "latency_ms", "queued -> started",
                                           "p99"),
    "retention pass s": ("lateness", "retention", "seconds"),
    "partitions dropped": ("lateness", "retention", "partitions_dropped"),
}


def _cases(schedules: int, history: int) -> tuple[tuple[str, int, int], ...]:
    """(label, idle schedules, executions of history) of the two cases."""
    return (("baseline", 0, min(history, BASELINE_HISTORY)), ("scaled", schedules, history))


@contextlib.asynccontextmanager
async def history_templates(services: Services, schedules: int,
                            history: int) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """Each case's history written once, for every run (and repetition) to copy."""
    async with contextlib.AsyncExitStack() as stack:
        yield {label: await stack.enter_async_context(history_template(services, past))
               for label, _, past in _cases(schedules, history) if past}


async def run_scale(services: Services, schedules: int, jobs: int, seconds: int, workers: int,
                    concurrency: int, api_seconds: float, clients: int,
                    options: Options, history: int = 0,
                    templates: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    if history and templates is None:
        async with history_templates(services, schedules, history) as written:
            return await run_scale(services, schedules, jobs, seconds, workers, concurrency,
                                   api_seconds, clients, options, history, written)
    templates = templates or {}
    runs: dict[str, dict[str, Any]] = {}
    for label, idle, past in _cases(schedules, history):
        run_options = options
        if past:  # written once; each of the three runs copies it
            run_options = replace(options, template=templates[label]["database"])
        runs[label] = {
            "lateness": await run_lateness(services, jobs, seconds, workers, run_options,
                                           idle, history=past),
            "api": await run_api(services, concurrency, api_seconds, clients,
                                 run_options, idle, history=past),
        }
        if history:
            runs[label]["burn_down"] = await burn_down(services, BURN_DOWN_JOBS, workers,
                                                       run_options, history=past)
    scaled = runs["scaled"]["lateness"]
    compared = COMPARED_WITH_HISTORY if history else COMPARED
    return {
        "scenario": "scale", "schedules": schedules, "history": history,
        "compare": {label: {"baseline": _pick(runs["baseline"], *path),
                            "scaled": _pick(runs["scaled"], *path)}
                    for label, path in compared.items()},
        "leader_rss_mb": scaled["cpu"].get("scheduler-1", {}).get("rss_mb", float("nan")),
        "preload_s": scaled["preload_s"],
        "history_preload_s": templates.get("scaled", {}).get("preload_s", 0.0),
        "runs": runs,
    }
