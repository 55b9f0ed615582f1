"""Latency of one ``immediate`` job from submit to ``succeeded``, one job at a time.

Two clocks are reported: the client's (POST sent -> succeeded seen, which includes the
poll interval) and the server's (the job row's ``created_at`` -> the execution's
``finished_at``, both PostgreSQL ``now()`` of their transactions).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import aiohttp

from jobsched_dev.api_client import TERMINAL_STATES, ApiClient
from jobsched_dev.bench.tasks import NOOP

JOBS = {
    "python": {"kind": "python", "python": {"function": NOOP}},
    "shell": {"kind": "shell", "shell": {"argv": ["/bin/true"]}},
}


async def _one(api: ApiClient, kind: str, poll_s: float) -> tuple[float, float]:
    body = {"name": f"bench-immediate-{kind}", "schedule": "immediate", **JOBS[kind]}
    sent = time.perf_counter()
    job = await api.create(body)
    while True:
        last = (await api.job(job["id"])).get("last_execution")
        if last and last["state"] == "succeeded":
            client = time.perf_counter() - sent
            server = (datetime.fromisoformat(last["finished_at"])
                      - datetime.fromisoformat(job["created_at"])).total_seconds()
            return client, server
        if last and last["state"] in TERMINAL_STATES:
            raise RuntimeError(f"bench job ended {last['state']}: {last.get('error')}")
        if time.perf_counter() - sent > 30:
            raise RuntimeError("bench job did not finish in 30 s")
        await asyncio.sleep(poll_s)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[max(0, int(len(ordered) * 0.9) - 1)] * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def run_immediate(url: str, count: int, kind: str, poll_s: float = 0.002,
                        token: str | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, url, token=token)
        await _one(api, kind, poll_s)  # warm-up: connections, caches
        samples = [await _one(api, kind, poll_s) for _ in range(count)]
    return {
        "scenario": "immediate",
        "kind": kind,
        "count": count,
        "client": _stats([s[0] for s in samples]),
        "server": _stats([s[1] for s in samples]),
    }
