"""``jobsched bench api``: submits/s and GET latency through one api process.

Two phases of SECONDS each at CONCURRENCY requests in flight: POST /api/v1/jobs (a no-op
python job on a yearly cron, so nothing fires), then GET /api/v1/jobs/{id} of jobs the first
phase created, picked at random. The client can run in several processes (``--clients``)
so that it is not the bottleneck on a small machine; its CPU is reported like the server's.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import aiohttp
import orjson

from jobsched.settings import Settings
from jobsched_dev.bench.cluster import BenchCluster, Services
from jobsched_dev.bench.common import Options, connect, make_cluster, summary_of_cpu
from jobsched_dev.bench.history import preload_history
from jobsched_dev.bench.lateness import preload_idle
from jobsched_dev.bench.procstat import CpuMeter
from jobsched_dev.bench.stats import distribution_ms
from jobsched_dev.bench.tasks import NOOP
from jobsched_dev.processes import source_env

JOB = {"name": "bench-api", "schedule": "0 0 1 1 *", "kind": "python",
       "python": {"function": NOOP}}
# The GET phases: one job; one execution of the history with its attempts; a job's history
# (its newest page).
PATHS = {"get": "/api/v1/jobs/{}", "get-execution": "/api/v1/executions/{}",
         "list-executions": "/api/v1/jobs/{}/executions"}


async def _phase(url: str, phase: str, concurrency: int, seconds: float, token: str | None,
                 ids: list[str]) -> dict[str, Any]:
    # Plain aiohttp, not jobsched_dev.api_client: this is the load generator, on the same
    # cores as the api it measures, so it reads GET bodies without parsing them.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    created: list[str] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    rng = random.Random()

    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def loop() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    if phase == "post":
                        async with session.post("/api/v1/jobs", json=JOB) as response:
                            body = await response.read()
                            ok = response.status == 201
                            if ok:
                                created.append(orjson.loads(body)["id"])
                    else:
                        path = PATHS[phase].format(rng.choice(ids))
                        async with session.get(path) as response:
                            await response.read()
                            ok = response.status == 200
                    key = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, key = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[key] = errors.get(key, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "created": created}


def _phase_in_process(*args: Any) -> dict[str, Any]:
    return asyncio.run(_phase(*args))


async def _run_phase(url: str, phase: str, concurrency: int, seconds: float,
                     token: str | None, ids: list[str], clients: int) -> dict[str, Any]:
    if clients <= 1:
        return await _phase(url, phase, concurrency, seconds, token, ids)
    share = [concurrency // clients + (1 if i < concurrency % clients else 0)
             for i in range(clients)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(clients) as pool:
        parts = await asyncio.gather(*(
            loop.run_in_executor(pool, _phase_in_process, url, phase, c, seconds, token, ids)
            for c in share if c > 0))
    return {
        "latencies": [x for p in parts for x in p["latencies"]],
        "errors": {k: sum(p["errors"].get(k, 0) for p in parts)
                   for k in {k for p in parts for k in p["errors"]}},
        "elapsed": max(p["elapsed"] for p in parts),
        "created": [x for p in parts for x in p["created"]],
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"requests": len(result["latencies"]),
            "per_s": len(result["latencies"]) / result["elapsed"],
            "errors": result["errors"],
            "latency_ms": distribution_ms(result["latencies"])}


async def measure_api(url: str, concurrency: int, seconds: float, token: str | None,
                      clients: int, meter: CpuMeter,
                      history: dict[str, Any] | None = None) -> dict[str, Any]:
    """``history``: what preload_history wrote; its executions and jobs are read too."""
    await _phase(url, "post", 2, 0.5, token, [])  # warm-up: connections, caches
    meter.start()
    posts = await _run_phase(url, "post", concurrency, seconds, token, [], clients)
    meter.stop()
    post_cpu = summary_of_cpu(meter.report())
    if not posts["created"]:
        raise RuntimeError(f"no job was created: {posts['errors']}")
    meter.start()
    gets = await _run_phase(url, "get", concurrency, seconds, token, posts["created"], clients)
    meter.stop()
    result = {"concurrency": concurrency, "seconds": seconds, "clients": clients,
              "post": {**_summary(posts), "cpu": post_cpu},
              "get": {**_summary(gets), "cpu": summary_of_cpu(meter.report())}}
    if history and history["execution_ids"]:
        for phase, ids in (("get-execution", history["execution_ids"]),
                           ("list-executions", history["job_ids"])):
            meter.start()
            done = await _run_phase(url, phase, concurrency, seconds, token, ids, clients)
            meter.stop()
            if not done["latencies"]:
                raise RuntimeError(f"{phase}: no request succeeded: {done['errors']}")
            result[phase] = {**_summary(done), "cpu": summary_of_cpu(meter.report())}
    return result


def _create_token(cluster: BenchCluster) -> str | None:
    """A token from ``jobsched token create`` where the api requires one, else None."""
    result = subprocess.run(
        [sys.executable, "-m", "jobsched", "token", "create", "--namespace", "default",
         "--role", "admin"],
        env=source_env(cluster.env()), capture_output=True, text=True, timeout=30, check=False)
    lines = result.stdout.strip().splitlines()
    return lines[-1].strip() if result.returncode == 0 and lines else None


async def run_api(services: Services, concurrency: int, seconds: float, clients: int,
                  options: Options, idle_schedules: int = 0,
                  history: int = 0) -> dict[str, Any]:
    async with make_cluster(services, options) as cluster:
        if "rate_limit_per_s" in Settings.model_fields:
            # The per-token limit guards a shared deployment; here it would cap what is
            # measured at the limit itself. --set rate_limit_per_s=N puts it back.
            cluster.settings.setdefault("JOBSCHED_RATE_LIMIT_PER_S", "0")
            # Likewise the per-namespace quota: a 30 s run creates far more than 10,000 jobs.
            cluster.settings.setdefault("JOBSCHED_MAX_ACTIVE_JOBS", "0")
        async with connect(cluster.database_url) as conn:
            preload_s = await preload_idle(conn, idle_schedules)
            loaded = await preload_history(conn, history)
        token = await asyncio.to_thread(_create_token, cluster)
        await cluster.start_ready("api")
        result = await measure_api(cluster.api_url, concurrency, seconds, token, clients,
                                   cluster.meter, loaded if history else None)
    return {"scenario": "api", "idle_schedules": idle_schedules, "preload_s": preload_s,
            "history": history, "history_preload_s": loaded["preload_s"], **result}


async def run_api_at(url: str, concurrency: int, seconds: float, clients: int,
                     token: str | None) -> dict[str, Any]:
    """Against a running api (``--url``): only the client and this host's services."""
    result = await measure_api(url.rstrip("/"), concurrency, seconds,
                               token or os.environ.get("JOBSCHED_TOKEN"), clients, CpuMeter())
    return {"scenario": "api", "url": url, **result}
