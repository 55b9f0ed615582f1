"""``jobsched bench workflow``: how fast a workflow moves from one node to the next.

chain: a CHAIN-node chain of no-op python nodes, run RUNS times; for every edge, the
parent's execution finished (its result's transaction) → the child's attempt started (the
worker's own clock at the call). Targets: p50 ≤ 15 ms, p99 ≤ 50 ms.

fan-out: a root, FANOUT children and a join of them all; from the root's finish to the
join's finish (target ≤ 1.5 s), with when the children started and the join after the
last child. Meanwhile, immediate jobs submitted every 50 ms show whether the fan-out slows
other work (their submit → started latency, against the same jobs before it).
--fanout-priority low puts the fan-out's nodes in the low band: the other (normal) jobs
then pass them.

large: a LARGE-node workflow created through the api (target: accepted and stored in
≤ 2 s, the client's clock around the POST).

Every figure comes from the executions' own timestamps in PostgreSQL (one machine, one
clock), read after the run.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg

from jobsched_dev.bench.api import _create_token
from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import Options, connect, make_cluster
from jobsched_dev.bench.stats import distribution_ms

RUN_OVER = {"succeeded", "failed", "cancelled"}

EDGES = """
SELECT d.node, d.parents, e.started_at, e.finished_at, e.state
FROM workflow_runs r
JOIN workflow_run_nodes rn ON rn.run_id = r.id
JOIN workflow_nodes d ON d.workflow_id = r.workflow_id AND d.version = r.version
                     AND d.node = rn.node
JOIN executions e ON e.id = rn.execution_id
WHERE r.id = $1
ORDER BY d.node
"""
IMMEDIATE_LATENCY = """
SELECT e.started_at - j.created_at AS latency FROM jobs j JOIN executions e ON e.job_id = j.id
WHERE j.id = ANY($1::uuid[]) AND e.started_at IS NOT NULL
"""


def _node(key: str, function: str, parents: list[str],
          priority: str = "normal") -> dict[str, Any]:
    node: dict[str, Any] = {"key": key, "kind": "python",
                            "python": {"function": function, "args": {}}, "priority": priority}
    if parents:
        node["depends_on"] = parents
    return node


def chain(length: int, function: str) -> list[dict[str, Any]]:
    return [_node(f"n{i}", function, [f"n{i - 1}"] if i else []) for i in range(length)]


def fan_out(width: int, function: str, priority: str = "normal") -> list[dict[str, Any]]:
    children = [f"c{i}" for i in range(width)]
    return [_node("root", function, [], priority),
            *(_node(c, function, ["root"], priority) for c in children),
            _node("join", function, children, priority)]


def binary_tree(size: int, function: str) -> list[dict[str, Any]]:
    return [_node(f"n{i}", function, [f"n{(i - 1) // 2}"] if i else []) for i in range(size)]


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.url + path, json=body) as response:
            data = await response.json(content_type=None)
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def workflow(self, name: str, nodes: list[dict[str, Any]]) -> str:
        created = await self.call("POST", "/api/v1/workflows", {"name": name, "nodes": nodes})
        return str(created["id"])

    async def run(self, workflow_id: str, timeout: float = 120) -> str:
        run = await self.call("POST", f"/api/v1/workflows/{workflow_id}/runs", {})
        deadline = time.monotonic() + timeout
        while run["state"] not in RUN_OVER:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run['id']} not over after {timeout:g} s")
            await asyncio.sleep(0.25)
            run = await self.call("GET", f"/api/v1/workflow-runs/{run['id']}")
        if run["state"] != "succeeded":
            raise RuntimeError(f"run {run['id']} {run['state']}")
        return str(run["id"])


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


async def _edges(conn: asyncpg.Connection, run_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(EDGES, run_id)


async def measure_chain(client: Client, conn: asyncpg.Connection, length: int, runs: int,
                        function: str) -> dict[str, Any]:
    workflow_id = await client.workflow("bench-chain", chain(length, function))
    await client.run(workflow_id)  # warm-up: connections, plans, caches
    latencies: list[float] = []
    for _ in range(runs):
        rows = await _edges(conn, await client.run(workflow_id))
        finished = {r["node"]: r["finished_at"] for r in rows}
        latencies += [(r["started_at"] - finished[r["parents"][0]]).total_seconds()
                      for r in rows if r["parents"]]
    return {"nodes": length, "runs": runs, "edges": len(latencies),
            "latency_ms": distribution_ms(latencies)}


async def _immediate_jobs(client: Client, function: str, stop: asyncio.Event,
                          every_s: float = 0.05) -> list[str]:
    """Immediate no-op jobs, one every ``every_s`` until ``stop``: other work to watch."""
    ids = []
    while not stop.is_set():
        job = await client.call("POST", "/api/v1/jobs", {
            "name": "bench-bystander", "schedule": "immediate", "kind": "python",
            "python": {"function": function}})
        ids.append(job["id"])
        await asyncio.sleep(every_s)
    return ids


async def _bystanders(client: Client, conn: asyncpg.Connection, function: str,
                      during: Any) -> tuple[Any, dict[str, float]]:
    """Run ``during`` while immediate jobs are submitted; their submit → started."""
    stop = asyncio.Event()
    submitting = asyncio.create_task(_immediate_jobs(client, function, stop))
    try:
        result = await during
    finally:
        stop.set()
        ids = await submitting
    await asyncio.sleep(1.0)  # the last ones start
    rows = await conn.fetch(IMMEDIATE_LATENCY, ids)
    return result, distribution_ms([r["latency"].total_seconds() for r in rows])


async def measure_fan_out(client: Client, conn: asyncpg.Connection, width: int,
                          function: str, priority: str = "normal") -> dict[str, Any]:
    workflow_id = await client.workflow("bench-fan-out", fan_out(width, function, priority))
    _, alone = await _bystanders(client, conn, function, asyncio.sleep(3))
    run_id, beside = await _bystanders(client, conn, function, client.run(workflow_id))
    rows = await _edges(conn, run_id)
    root, join = rows[0], rows[-1]
    children = rows[1:-1]
    last_child = max(r["finished_at"] for r in children)
    return {
        "width": width,
        "priority": priority,
        "all_done_after_root_s": _ms(join["finished_at"], root["finished_at"]) / 1000,
        "first_child_started_ms": min(_ms(r["started_at"], root["finished_at"])
                                      for r in children),
        "last_child_started_ms": max(_ms(r["started_at"], root["finished_at"])
                                     for r in children),
        "last_child_finished_ms": _ms(last_child, root["finished_at"]),
        "join_started_after_last_child_ms": _ms(join["started_at"], last_child),
        "bystanders_alone_ms": alone,
        "bystanders_during_ms": beside,
    }


async def measure_large(client: Client, size: int, function: str) -> dict[str, Any]:
    nodes = binary_tree(size, function)
    started = time.perf_counter()
    await client.workflow("bench-large", nodes)
    return {"nodes": size, "create_s": time.perf_counter() - started}


async def run_workflow(services: Services, options: Options, *, chain_nodes: int, runs: int,
                       fanout: int, large: int, workers: int,
                       fanout_priority: str = "normal") -> dict[str, Any]:
    async with make_cluster(services, options) as cluster:
        cluster.settings.setdefault("JOBSCHED_RATE_LIMIT_PER_S", "0")
        token = await asyncio.to_thread(_create_token, cluster)
        await cluster.start_pipeline(workers)
        await cluster.start_ready("api")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession(headers=headers) as session, \
                connect(cluster.database_url) as conn:
            client = Client(session, cluster.api_url)
            cluster.meter.start()
            result = {
                "scenario": "workflow", "workers": workers, "task": options.task,
                "chain": await measure_chain(client, conn, chain_nodes, runs, options.function),
                "fan_out": await measure_fan_out(client, conn, fanout, options.function,
                                                 fanout_priority),
                "large": await measure_large(client, large, options.function),
            }
            cluster.meter.stop()
            result["cpu"] = {k: {m: round(v, 3) for m, v in values.items()}
                             for k, values in cluster.meter.report().items()}
    return result
