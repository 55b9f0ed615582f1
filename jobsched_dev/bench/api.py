"""``jobsched bench api``: submits/s and GET latency through one api process.

Two phases of SECONDS each at CONCURRENCY requests in flight: POST /api/v1/jobs (a no-op
python job on a yearly cron, so nothing fires), then GET /api/v1/jobs/{id} of jobs the first
phase created, picked at random. The client is a lean HTTP/1.1 load generator (one
keep-alive connection per request in flight, requests prepared once) and can run in
several processes (``--clients``) so that it is not the bottleneck on a small machine; its
CPU is reported like the server's.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from yarl import URL

from jobsched.settings import Settings
from jobsched_dev.bench.cluster import BenchCluster, Services
from jobsched_dev.bench.common import Options, connect, make_cluster, summary_of_cpu
from jobsched_dev.bench.history import preload_history
from jobsched_dev.bench.lateness import preload_idle
from jobsched_dev.bench.procstat import CpuMeter
from jobsched_dev.bench.stats import distribution_ms
from jobsched_dev.bench.tasks import NOOP

#: An answer slower than this is counted as an error ("TimeoutError").
REQUEST_TIMEOUT_S = 30.0
JOB = {"name": "bench-api", "schedule": "0 0 1 1 *", "kind": "python",
       "python": {"function": NOOP}}
# The GET phases: one job; one execution of the history with its attempts; a job's history
# (its newest page).
PATHS = {"get": "/api/v1/jobs/{}", "get-execution": "/api/v1/executions/{}",
         "list-executions": "/api/v1/jobs/{}/executions"}


class _Connection:
    """One keep-alive HTTP/1.1 connection of the load generator: it writes prepared
    requests and reads each answer by its Content-Length, and nothing more. It shares the
    cores with the api it measures, so it must cost little: aiohttp's client took 140-170
    µs of CPU per POST here, about as much as the api itself; this takes a fraction."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, message: bytes) -> tuple[int, bytes]:
        """One request and its answer; an api that stops answering fails it after
        REQUEST_TIMEOUT_S (counted as an error) rather than hanging the benchmark."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await self._request(message)

    async def _request(self, message: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.url.host, self.url.port, ssl=self.url.scheme == "https" or None)
        try:
            self.writer.write(message)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
            length = int(lower[at + 17:lower.index(b"\r\n", at + 2)])
            body = await self.reader.readexactly(length)
            if b"\r\nconnection: close" in lower:
                self.close()
            return status, body
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _message(url: URL, method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    """A whole request, ready to write."""
    host = f"[{url.host}]" if url.host and ":" in url.host else url.host  # IPv6
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{url.port}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _phase(url: str, phase: str, concurrency: int, seconds: float, token: str | None,
                 ids: list[str]) -> dict[str, Any]:
    base = URL(url)
    latencies: list[float] = []
    created: list[str] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    rng = random.Random()
    post = _message(base, "POST", "/api/v1/jobs", token, orjson.dumps(JOB))
    gets = {} if phase == "post" else {
        job_id: _message(base, "GET", PATHS[phase].format(job_id), token) for job_id in ids}

    async def loop() -> None:
        connection = _Connection(base)
        try:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    if phase == "post":
                        status, body = await connection.request(post)
                        ok = status == 201
                        if ok:
                            created.append(orjson.loads(body)["id"])
                    else:
                        status, _ = await connection.request(gets[rng.choice(ids)])
                        ok = status == 200
                    key = str(status)
                except (OSError, TimeoutError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError, ValueError) as exc:
                    ok, key = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[key] = errors.get(key, 0) + 1
        finally:
            connection.close()

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


def _summary(result: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """A phase's rate, errors, latency and CPU, with the api's CPU per request (what
    the api's own code costs, whatever the load generator and the machine's share)."""
    requests = len(result["latencies"])
    api = [v["cpu_s"] for k, v in cpu.items() if k.startswith("api")]  # none with --url
    return {"requests": requests,
            "per_s": requests / result["elapsed"],
            "errors": result["errors"],
            "latency_ms": distribution_ms(result["latencies"]),
            "cpu": cpu,
            "api_cpu_us_per_request": 1e6 * sum(api) / requests if requests and api
                                      else math.nan}


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
              "post": _summary(posts, post_cpu),
              "get": _summary(gets, summary_of_cpu(meter.report()))}
    if history and history["execution_ids"]:
        for phase, ids in (("get-execution", history["execution_ids"]),
                           ("list-executions", history["job_ids"])):
            meter.start()
            done = await _run_phase(url, phase, concurrency, seconds, token, ids, clients)
            meter.stop()
            if not done["latencies"]:
                raise RuntimeError(f"{phase}: no request succeeded: {done['errors']}")
            result[phase] = _summary(done, summary_of_cpu(meter.report()))
    return result


def _create_token(cluster: BenchCluster) -> str | None:
    """A token from ``jobsched token create`` where the api requires one, else None."""
    result = cluster.run_python("-m", "jobsched", "token", "create", "--namespace",
                                "default", "--role", "admin", timeout=30)
    lines = result.stdout.strip().splitlines()
    return lines[-1].strip() if result.returncode == 0 and lines else None


def _settings_of(cluster: BenchCluster) -> frozenset[str]:
    """The settings the api measured knows (another commit's may lack some), asked of
    its own Settings."""
    if cluster.source is None:
        return frozenset(Settings.model_fields)
    done = cluster.run_python("-c", "from jobsched.settings import Settings; "
                                    "print(' '.join(Settings.model_fields))", timeout=60)
    done.check_returncode()
    return frozenset(done.stdout.split())


async def run_api(services: Services, concurrency: int, seconds: float, clients: int,
                  options: Options, idle_schedules: int = 0,
                  history: int = 0, source: Path | None = None) -> dict[str, Any]:
    """``source``: another commit's tree whose api is measured (by this load generator:
    ``--vs-commit`` compares the apis, not two generators)."""
    cluster = make_cluster(services, options)
    cluster.source = source
    known = await asyncio.to_thread(_settings_of, cluster)
    async with cluster:
        if "rate_limit_per_s" in known:
            # The per-token limit guards a shared deployment; here it would cap what is
            # measured at the limit itself. --set rate_limit_per_s=N puts it back.
            cluster.settings.setdefault("JOBSCHED_RATE_LIMIT_PER_S", "0")
        if "max_active_jobs" in known:
            # Likewise the per-namespace quota: a 30 s run creates far more than 10,000 jobs.
            cluster.settings.setdefault("JOBSCHED_MAX_ACTIVE_JOBS", "0")
        async with connect(cluster.database_url) as conn:
            preload_s = await preload_idle(conn, idle_schedules)
            loaded = await preload_history(conn, history)
        token = await asyncio.to_thread(_create_token, cluster)
        started = await cluster.start_ready("api")
        # Where the api process runs from, as the system sees it (``--vs-commit``: the
        # other commit's tree).
        where = {"cwd": os.readlink(f"/proc/{proc.pid}/cwd"),
                 "path": _environ(proc.pid).get("PYTHONPATH", "")} \
            if started and (proc := started[0]).pid is not None else None
        result = await measure_api(cluster.api_url, concurrency, seconds, token, clients,
                                   cluster.meter, loaded if history else None)
    return {"scenario": "api", "idle_schedules": idle_schedules, "preload_s": preload_s,
            "history": history, "history_preload_s": loaded["preload_s"],
            "source": str(source) if source else None, "api_process": where, **result}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


async def run_api_at(url: str, concurrency: int, seconds: float, clients: int,
                     token: str | None) -> dict[str, Any]:
    """Against a running api (``--url``): only the client and this host's services."""
    result = await measure_api(url.rstrip("/"), concurrency, seconds,
                               token or os.environ.get("JOBSCHED_TOKEN"), clients, CpuMeter())
    return {"scenario": "api", "url": url, **result}
