"""GET /api/v1/cluster: the leader and its epoch, schedulers, live workers, queue depths.

Each part comes from its own source of truth (PostgreSQL's leader row, ZooKeeper's
election and worker znodes, RabbitMQ's queues) and fails alone: an unreachable source
shows as an error in its part, never as a failed request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiozk
import orjson
from aiozk import exc as zk_exc

from jobsched.adapters.postgres import JobStore
from jobsched.adapters.rabbitmq import Broker
from jobsched.adapters.zookeeper import ELECTION_PATH, WORKERS_PATH

log = logging.getLogger(__name__)

PART_TIMEOUT_S = 2.0


class ClusterView:
    def __init__(self, store: JobStore, zk: aiozk.ZKClient | None, broker: Broker | None,
                 queue_name: str, dead_queue: str) -> None:
        self.store = store
        self.zk = zk
        self.broker = broker
        self.queue_name = queue_name
        self.dead_queue = dead_queue

    async def describe(self) -> dict[str, Any]:
        leader, schedulers, workers, queues = await asyncio.gather(
            self._part(self._leader()), self._part(self._schedulers()),
            self._part(self._workers()), self._part(self._queues()))
        return {"leader": leader, "schedulers": schedulers, "workers": workers,
                "queues": queues}

    @staticmethod
    async def _part(coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, PART_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - one source down must not fail the view
            return {"error": f"unavailable: {exc!r}"[:200]}

    async def _leader(self) -> dict[str, Any] | None:
        row = await self.store.current_leader()
        if row is None or row["holder"] is None:
            return None
        return {"instance": row["holder"], "epoch": row["epoch"],
                "since": row["acquired_at"].isoformat()}

    async def _children(self, path: str) -> list[tuple[str, bytes]]:
        if self.zk is None:
            raise ConnectionError("no ZooKeeper client")
        try:
            names = await self.zk.get_children(path)
        except zk_exc.NoNode:
            return []
        found = []
        for name in names:
            try:
                found.append((name, await self.zk.get_data(f"{path}/{name}") or b""))
            except zk_exc.NoNode:
                continue
        return found

    async def _schedulers(self) -> list[dict[str, Any]]:
        children = sorted(await self._children(ELECTION_PATH), key=lambda c: c[0][-10:])
        return [{"instance": data.decode(errors="replace"), "leader": i == 0,
                 "sequence": int(name[-10:])} for i, (name, data) in enumerate(children)]

    async def _workers(self) -> list[dict[str, Any]]:
        workers = []
        for name, data in await self._children(WORKERS_PATH):
            try:
                info = orjson.loads(data) if data else {}
            except orjson.JSONDecodeError:
                info = {}
            workers.append({"instance": name, "inflight": info.get("inflight", 0),
                            "prefetch": info.get("prefetch")})
        return sorted(workers, key=lambda w: w["instance"])

    async def _queues(self) -> dict[str, int]:
        if self.broker is None:
            raise ConnectionError("no RabbitMQ connection")
        depths = await self.broker.queue_depths()
        return {"executions": depths[self.queue_name], "dead": depths[self.dead_queue]}
