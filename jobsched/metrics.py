"""Prometheus metrics (aioprometheus): one registry per process, shared by its roles.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` units); every
metric the dashboard and alert rules in ``config/`` use is defined here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aioprometheus import Counter, Gauge, Histogram, Registry, render

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                    1800.0)


class Tally:
    """Increments of a labelled counter on a hot path, added up in a plain dict and given to
    the counter when the metrics are read (``Metrics.flush``, before every scrape).
    aioprometheus checks and encodes the labels on every call (~2 µs: orjson of the labels
    dict), which a worker paid on every run of a no-op job."""

    def __init__(self, counter: Counter, names: tuple[str, ...]) -> None:
        self.counter = counter
        self.names = names
        self._pending: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str) -> None:
        """One more for these label values (in the order of ``names``)."""
        self._pending[values] = self._pending.get(values, 0) + 1

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for values, count in pending.items():
            self.counter.add(dict(zip(self.names, values, strict=True)), count)


class Observer:
    """Observations of a labelled histogram on a hot path: each label set's own histogram
    is looked up once, through aioprometheus, and then observed directly (no label check
    and encoding per call, as for ``Tally``)."""

    def __init__(self, histogram: Histogram, names: tuple[str, ...]) -> None:
        self.histogram = histogram
        self.names = names
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, seconds: float, *values: str) -> None:
        """An observation for these label values (in the order of ``names``)."""
        child = self._children.get(values)
        if child is None:
            labels = dict(zip(self.names, values, strict=True))
            self.histogram.observe(labels, seconds)
            self._children[values] = self.histogram.get_value(labels)
            return
        child.observe(float(seconds))


class Metrics:
    def __init__(self, role: str, instance: str) -> None:
        self.registry = Registry()
        r = self.registry

        # api
        self.api_requests = Counter(
            "jobsched_api_requests_total", "API requests by route, method and status.",
            registry=r)
        self.api_latency = Histogram(
            "jobsched_api_request_duration_seconds", "API request latency by route.",
            registry=r, buckets=LATENCY_BUCKETS)
        # Every request's, through the cheaper paths above.
        self.api_responses = Tally(self.api_requests, ("route", "method", "status"))
        self.api_timings = Observer(self.api_latency, ("route", "method"))

        # scheduler
        self.is_leader = Gauge(
            "jobsched_scheduler_is_leader", "1 while this scheduler is the leader.", registry=r)
        self.leader_epoch = Gauge(
            "jobsched_scheduler_leader_epoch", "Fencing epoch of the current leadership term.",
            registry=r)
        self.takeovers = Counter(
            "jobsched_scheduler_takeovers_total", "Leadership terms this scheduler began.",
            registry=r)
        self.fires = Counter(
            "jobsched_scheduler_fires_total",
            "Fires recorded by the leader, by state (queued, missed, skipped).", registry=r)
        self.misfires = Counter(
            "jobsched_scheduler_misfires_total",
            "Fires not run (missed or skipped), by state and reason.", registry=r)
        self.fire_lateness = Histogram(
            "jobsched_scheduler_fire_lateness_seconds",
            "Due time to publish-confirmed, per queued fire.", registry=r,
            buckets=LATENCY_BUCKETS)
        self.tick_duration = Histogram(
            "jobsched_scheduler_tick_duration_seconds", "Duration of a leader tick.",
            registry=r, buckets=LATENCY_BUCKETS)
        self.unpublished = Gauge(
            "jobsched_scheduler_unpublished_backlog",
            "Executions committed but not yet confirmed by RabbitMQ (outbox).", registry=r)
        self.reaped = Counter(
            "jobsched_scheduler_reaped_total",
            "Running executions whose worker lost its lease, by next state.", registry=r)
        self.retention_duration = Histogram(
            "jobsched_scheduler_retention_seconds",
            "Duration of a history retention pass of the leader (age limit and per-job "
            "limits); its cost must follow the rows it deletes, not the history size.",
            registry=r, buckets=LATENCY_BUCKETS)
        self.retries_requeued = Counter(
            "jobsched_scheduler_retries_queued_total", "Retry attempts queued by the leader.",
            registry=r)

        # workflows (counted by the leader; node latency by the workers)
        self.workflow_runs_started = Counter(
            "jobsched_workflow_runs_started_total",
            "Workflow runs started by the leader's schedule.", registry=r)
        self.workflow_runs = Counter(
            "jobsched_workflow_runs_total",
            "Workflow runs by outcome (succeeded, failed, cancelled; skipped and missed "
            "fires), counted by the leader.", registry=r)
        self.workflow_runs_in_flight = Gauge(
            "jobsched_workflow_runs_in_flight", "Workflow runs running now (the leader's view).",
            registry=r)
        self.workflow_node_start_latency = Histogram(
            "jobsched_workflow_node_start_latency_seconds",
            "From the end of a node's last needed parent (when its trigger rule let it run) "
            "to the start of its first attempt.", registry=r, buckets=LATENCY_BUCKETS)

        # worker
        self.executions = Counter(
            "jobsched_worker_executions_total", "Attempts run, by kind and outcome.",
            registry=r)
        self.execution_duration = Histogram(
            "jobsched_worker_execution_duration_seconds", "Attempt run time, by kind.",
            registry=r, buckets=DURATION_BUCKETS)
        self.start_lateness = Histogram(
            "jobsched_worker_start_lateness_seconds",
            "Scheduled time to start of the first attempt (due -> started), by priority band.",
            registry=r, buckets=LATENCY_BUCKETS)
        # The worker's per-run metrics, through the cheaper paths above.
        self.runs = Tally(self.executions, ("kind", "outcome"))
        self.run_duration = Observer(self.execution_duration, ("kind",))
        self.run_lateness = Observer(self.start_lateness, ("priority",))
        self.waiting = Gauge(
            "jobsched_worker_waiting",
            "Deliveries due and waiting for a run slot, unclaimed, by priority band.",
            registry=r)
        self.inflight = Gauge(
            "jobsched_worker_inflight", "Executions this worker holds right now.", registry=r)
        self.lost_claims = Counter(
            "jobsched_worker_lost_claims_total",
            "Deliveries acked unrun because the claim failed (duplicates, stale attempts).",
            registry=r)
        self.retries = Counter(
            "jobsched_worker_retries_total", "Failed attempts that will be retried.",
            registry=r)
        self.dead_lettered = Counter(
            "jobsched_worker_dead_lettered_total",
            "Executions dead after their last attempt (or malformed messages), sent to the DLQ.",
            registry=r)

        # webhooks (delivered by the worker role)
        self.webhook_deliveries = Counter(
            "jobsched_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: succeeded, failed (will retry), exhausted "
            "(no retry left), gone (410: the endpoint was disabled).", registry=r)
        self.webhook_attempt_duration = Histogram(
            "jobsched_webhook_attempt_duration_seconds",
            "Time from sending a webhook to its answer (or the timeout).", registry=r,
            buckets=LATENCY_BUCKETS)
        self.webhook_oldest_pending = Gauge(
            "jobsched_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not yet made (0: none waiting).", registry=r)
        self.webhook_inflight = Gauge(
            "jobsched_webhook_inflight", "Webhook deliveries this worker is sending now.",
            registry=r)

        # cluster, as the leader sees it
        self.queue_messages = Gauge(
            "jobsched_queue_messages", "Messages ready in a queue.", registry=r)
        self.queue_consumers = Gauge(
            "jobsched_queue_consumers", "Consumers of a queue.", registry=r)
        self.live_workers = Gauge(
            "jobsched_live_workers", "Workers registered in ZooKeeper.", registry=r)
        self.up = Gauge("jobsched_up", "1 while the process runs, labelled by role.",
                        registry=r)
        self.up.set({"role": role}, 1)

    def flush(self) -> None:
        """What the hot paths tallied, into the collectors (before they are read)."""
        self.runs.flush()
        self.api_responses.flush()

    def handler(self) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def metrics(request: web.Request) -> web.Response:
            self.flush()
            body, headers = render(self.registry, request.headers.getall("Accept", []))
            return web.Response(body=body, headers=headers)

        return metrics


def instrument_api(app: web.Application, metrics: Metrics) -> None:
    """Count and time every request by route template (bounded labels), and serve
    /metrics. Called before the app starts, so the middleware list is still open."""

    @web.middleware
    async def measure(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.api_responses.inc(route, request.method, str(status))
            metrics.api_timings.observe(time.perf_counter() - started, route, request.method)

    app.middlewares.insert(0, measure)
    app.router.add_get("/metrics", metrics.handler())
