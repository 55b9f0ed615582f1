"""``jobsched bench webhooks``: what webhooks cost and how fast they arrive.

A receiver (aiohttp, in this process, answering 204) and an endpoint subscribed to
``execution.succeeded`` of every job; a scheduler and W workers (which deliver too).

- latency: RATE immediate no-op jobs/s offered for SECONDS; for each execution, the time
  from its ending transaction (``executions.finished_at``, the database clock, the same
  machine's) to the receiver having the delivery: commit → delivery p50/p99.
- deliveries/s: EVENTS events recorded in one transaction (``webhook_enqueue``), until the
  receiver has them all.
- burn-down: JOBS immediate jobs COPYed at once (as ``jobsched bench throughput --mode
  burn-down``), each on a fresh deployment: without any endpoint; with the endpoint but
  no worker sending (the roles get no secrets key: what the outbox alone costs the
  ending transactions); and with the endpoint, delivering meanwhile on the same machine.
  Executions/s of each, and the ratios to the first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from jobsched.adapters.postgres.webhooks import Q as WEBHOOK_SQL
from jobsched.crypto import SecretBox, new_key
from jobsched.domain.webhooks import new_secret
from jobsched.ports import EndpointColumns
from jobsched_dev.bench.cluster import Services, free_port
from jobsched_dev.bench.common import (
    Options,
    connect,
    make_cluster,
    rate_between,
    read_fires,
    state_counts,
    wait_finished,
)
from jobsched_dev.bench.load import copy_jobs, insert_immediate, job_rows
from jobsched_dev.bench.stats import distribution_ms, fmt, table

ENQUEUE_MANY = """
SELECT sum(webhook_enqueue('default', 'execution.succeeded', '{}'::jsonb,
                           jsonb_build_object('id', 'bench-' || n)))
FROM generate_series(1, $1) AS n
"""
SELECT_FINISHED = """
SELECT e.id, e.finished_at FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE j.name = $1 AND e.finished_at IS NOT NULL
"""


class Receiver:
    """Records when each delivery arrived, by the id in its data; answers 204."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, float] = {}
        self.requests = 0
        self.changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests += 1
        self.arrived.setdefault(str(body["data"]["id"]), time.time())
        self.changed.set()
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.arrived) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True


def _with_webhooks(options: Options, key: str, deliver: bool = True) -> Options:
    """The roles' settings: a secrets key (without one, workers send nothing) and loopback
    allowed for the receiver."""
    extra: tuple[tuple[str, str], ...] = (("JOBSCHED_HTTP_ALLOW_CIDRS", "127.0.0.0/8"),)
    if deliver:
        extra += (("JOBSCHED_SECRETS_KEY", key),)
    return dataclasses.replace(options, settings=options.settings + extra)


async def _subscribe(conn: asyncpg.Connection, url: str, key: str) -> None:
    """The bench's endpoint, written as the api would (its secret sealed)."""
    columns = EndpointColumns(url=url, events=["execution.succeeded"], labels={},
                              description="bench", enabled=True)
    await WEBHOOK_SQL.insert_endpoint.fetchrow(
        conn, namespace="default", secret=SecretBox([key]).seal(new_secret().encode()),
        **dataclasses.asdict(columns))


async def latency_and_rate(services: Services, rate: int, seconds: float, events: int,
                           workers: int, options: Options) -> dict[str, Any]:
    key = new_key()
    receiver = Receiver()
    await receiver.start()
    try:
        async with make_cluster(services, _with_webhooks(options, key)) as cluster, \
                connect(cluster.database_url) as conn:
            await _subscribe(conn, receiver.url, key)
            procs = await cluster.start_pipeline(workers)
            name = cluster.job_name("webhooks")
            cluster.meter.start()
            offered = await _offer(conn, name, rate, seconds, options.function)
            await wait_finished(conn, name, offered, seconds + 30, procs)
            delivered = await receiver.wait_for(offered, 30)
            finished = await conn.fetch(SELECT_FINISHED, name)
            latencies = [receiver.arrived[str(r["id"])] - r["finished_at"].timestamp()
                         for r in finished if str(r["id"]) in receiver.arrived]
            # deliveries/s: a burst recorded in one transaction
            before = len(receiver.arrived)
            started = time.time()
            await conn.fetchval(ENQUEUE_MANY, events)
            burst_done = await receiver.wait_for(before + events, 120)
            burst = [t for i, t in receiver.arrived.items() if i.startswith("bench-")]
            cluster.meter.stop()
    finally:
        await receiver.stop()
    span = (max(burst) - started) if burst else float("nan")
    return {
        "offered_per_s": rate, "seconds": seconds, "executions": len(finished),
        "delivered": len(latencies), "all_delivered": delivered,
        "commit_to_delivery_ms": distribution_ms(latencies),
        "burst_events": events, "burst_delivered": len(burst), "burst_complete": burst_done,
        "deliveries_per_s": len(burst) / span if span > 0 else float("nan"),
        "requests": receiver.requests, "workers": workers,
        "cpu": {n: {k: round(v, 3) for k, v in c.items()}
                for n, c in cluster.meter.report().items()},
    }


async def _offer(conn: asyncpg.Connection, name: str, rate: int, seconds: float,
                 function: str) -> int:
    began = time.monotonic()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - began)) + 1)
        if due > sent:
            await insert_immediate(conn, name, due - sent, function)
            sent = due
        await asyncio.sleep(0.02)
    return sent


async def burn_down(services: Services, jobs: int, workers: int, options: Options,
                    subscribed: bool, deliver: bool = True,
                    timeout: float = 180) -> dict[str, Any]:
    """``jobsched bench throughput``'s burn-down, with (``subscribed``) or without an
    endpoint taking every execution.succeeded; ``deliver``: the workers send them
    meanwhile (else they only pile up in the outbox)."""
    key = new_key()
    receiver = Receiver()
    await receiver.start()
    try:
        async with make_cluster(services, _with_webhooks(options, key, deliver)) as cluster, \
                connect(cluster.database_url) as conn:
            if subscribed:
                await _subscribe(conn, receiver.url, key)
            name = cluster.job_name("burn-down")
            procs = await cluster.start_pipeline(workers)
            now = datetime.now(UTC)
            await copy_jobs(conn, job_rows(name, "immediate", now, jobs, now=now,
                                            function=options.function))
            committed = await conn.fetchval("SELECT now()")
            drained = await wait_finished(conn, name, jobs, timeout, procs)
            fires = await read_fires(conn, name)
            delivered = await receiver.wait_for(jobs, timeout) if subscribed and deliver \
                else False
            outbox = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
            delivered_at = max(receiver.arrived.values()) if receiver.arrived else None
    finally:
        await receiver.stop()
    finished = [f["finished_at"] for f in fires if f["finished_at"] is not None]
    last = max(finished) if finished else committed
    elapsed = (last - committed).total_seconds()
    out = {"subscribed": subscribed, "delivering": deliver, "outbox_rows": outbox,
           "jobs": jobs, "drained": drained,
           "states": state_counts(fires),
           "executions_per_s": len(finished) / elapsed if elapsed > 0 else float("nan"),
           "steady_executions_per_s": rate_between(finished)}
    if subscribed and deliver:
        out["all_delivered"] = delivered
        out["delivered_s_after_commit"] = (delivered_at - committed.timestamp()
                                           if delivered_at else float("nan"))
    return out


async def run_webhooks(services: Services, options: Options, *, rate: int, seconds: float,
                       events: int, jobs: int, workers: int) -> dict[str, Any]:
    result: dict[str, Any] = {"scenario": "webhooks"}
    result["latency"] = await latency_and_rate(services, rate, seconds, events, workers,
                                               options)
    if jobs:
        without = await burn_down(services, jobs, workers, options, subscribed=False)
        outbox = await burn_down(services, jobs, workers, options, subscribed=True,
                                 deliver=False)
        with_endpoint = await burn_down(services, jobs, workers, options, subscribed=True)
        rate = without["executions_per_s"]
        result["burn_down"] = {
            "without": without, "outbox_only": outbox, "with_endpoint": with_endpoint,
            "outbox_ratio": outbox["executions_per_s"] / rate,
            "ratio": with_endpoint["executions_per_s"] / rate}
    return result


def render(r: dict[str, Any], repeat: int) -> str:
    lat = r["latency"]
    d = lat["commit_to_delivery_ms"]
    head = f"webhooks, {lat['workers']} worker process(es)" + (
        f" (median of {repeat} runs)" if repeat > 1 else "")
    rows = [
        [f"commit -> delivery at {lat['offered_per_s']} jobs/s (ms)",
         f"p50 {fmt(d['p50'])}  p95 {fmt(d['p95'])}  p99 {fmt(d['p99'])}  max {fmt(d['max'])}"],
        ["delivered / executions", f"{fmt(lat['delivered'])} / {fmt(lat['executions'])}"],
        [f"deliveries/s (burst of {fmt(lat['burst_events'])} events)",
         fmt(lat["deliveries_per_s"])],
    ]
    if "burn_down" in r:
        b = r["burn_down"]
        rows += [
            [f"burn-down {fmt(b['without']['jobs'])} jobs, no endpoint (executions/s)",
             fmt(b["without"]["executions_per_s"])],
            ["burn-down, endpoint subscribed, nothing sent (executions/s)",
             fmt(b["outbox_only"]["executions_per_s"])],
            ["  ratio: what the outbox costs the hot path", fmt(b["outbox_ratio"], 3)],
            ["burn-down, endpoint subscribed and delivering (executions/s)",
             fmt(b["with_endpoint"]["executions_per_s"])],
            ["  ratio (target >= 0.90)", fmt(b["ratio"], 3)],
            ["all delivered after the commit (s)",
             fmt(b["with_endpoint"].get("delivered_s_after_commit", float("nan")))],
        ]
    return head + "\n" + table(["", ""], rows)
