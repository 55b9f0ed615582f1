"""``jobsched bench scale``: ``lateness`` and ``api`` on an empty database and on one holding
SCHEDULES active schedules (COPYed; none falls due during the run), in the same run, so the
figures compare as ratios. The leader's RSS with the schedules stored is reported too."""

from __future__ import annotations

from typing import Any

from jobsched_dev.bench.api import run_api
from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import Options
from jobsched_dev.bench.lateness import run_lateness


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


async def run_scale(services: Services, schedules: int, jobs: int, seconds: int, workers: int,
                    concurrency: int, api_seconds: float, clients: int,
                    options: Options) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for label, idle in (("baseline", 0), ("scaled", schedules)):
        runs[label] = {
            "lateness": await run_lateness(services, jobs, seconds, workers, options, idle),
            "api": await run_api(services, concurrency, api_seconds, clients, options, idle),
        }
    scaled = runs["scaled"]["lateness"]
    return {
        "scenario": "scale", "schedules": schedules,
        "compare": {label: {"baseline": _pick(runs["baseline"], *path),
                            "scaled": _pick(runs["scaled"], *path)}
                    for label, path in COMPARED.items()},
        "leader_rss_mb": scaled["cpu"].get("scheduler-1", {}).get("rss_mb", float("nan")),
        "preload_s": scaled["preload_s"],
        "runs": runs,
    }
