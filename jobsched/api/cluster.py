"""GET /api/v1/cluster: the leader and its epoch, schedulers, live workers, queue depths.

Each part comes from its own source of truth (PostgreSQL's leader row, ZooKeeper's
election and worker znodes, RabbitMQ's queues) and fails alone: an unreachable source
shows as an error in its part, never as a failed request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from jobsched.domain.priority import Priority
from jobsched.ports import Broker, Coordinator, JobRepository

log = logging.getLogger(__name__)

PART_TIMEOUT_S = 2.0


class ClusterView:
    """``coordinator`` and ``broker`` may be attached later (the api connects to them in
    the background so that it never waits on them to serve jobs)."""

    def __init__(self, jobs: JobRepository, coordinator: Coordinator | None,
                 broker: Broker | None, queue_names: Mapping[Priority, str],
                 dead_queue: str) -> None:
        self.jobs = jobs
        self.coordinator = coordinator
        self.broker = broker
        self.queue_names = dict(queue_names)
        self.dead_queue = dead_queue

    async def describe(self) -> dict[str, Any]:
        leader, schedulers, workers, queues = await asyncio.gather(
            self._part(self._leader()), self._part(self._schedulers()),
            self._part(self._workers()), self._part(self._queues()))
        return {"leader": leader, "schedulers": schedulers, "workers": workers,
                "queues": queues}

    async def workers_and_queues(self) -> tuple[Any, Any]:
        """The live workers and the queue depths, each part failing alone (as in
        ``describe``): what ``GET /api/v1/jobs/{id}/explain`` shows of the cluster."""
        workers, queues = await asyncio.gather(self._part(self._workers()),
                                               self._part(self._queues()))
        return workers, queues

    @staticmethod
    async def _part(coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, PART_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - one source down must not fail the view
            return {"error": f"unavailable: {exc!r}"[:200]}

    async def _leader(self) -> dict[str, Any] | None:
        leader = await self.jobs.current_leader()
        if leader is None or leader.holder is None:
            return None
        return {"instance": leader.holder, "epoch": leader.epoch,
                "since": leader.acquired_at.isoformat() if leader.acquired_at else None}

    def _coordination(self) -> Coordinator:
        if self.coordinator is None:
            raise ConnectionError("no ZooKeeper client")
        return self.coordinator

    async def _schedulers(self) -> list[dict[str, Any]]:
        return [{"instance": s.instance, "leader": s.leader, "sequence": s.sequence}
                for s in await self._coordination().schedulers()]

    async def _workers(self) -> list[dict[str, Any]]:
        return [{"instance": w.instance, "inflight": w.inflight, "prefetch": w.prefetch}
                for w in await self._coordination().workers()]

    async def _queues(self) -> dict[str, object]:
        """Runs waiting to start in all bands and per band (PostgreSQL: fired, not started,
        wherever they wait), RabbitMQ's ready messages per band (a message carries up to
        ``message_attempts`` runs), and the dead-letter queue's messages (one run each)."""
        if self.broker is None:
            raise ConnectionError("no RabbitMQ connection")
        stats, waiting = await asyncio.gather(self.broker.queue_stats(),
                                              self.jobs.waiting_by_band())
        bands = {band.value: waiting[band] for band in Priority}
        messages = {band.value: stats[name].messages for band, name in self.queue_names.items()}
        return {"executions": sum(bands.values()), "by_priority": bands, "messages": messages,
                "dead": stats[self.dead_queue].messages}
