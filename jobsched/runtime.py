"""Hosting roles in one event loop: the adapters they share, signals, readiness, drain.

This is where ports meet adapters: the roles (api, scheduler, worker) get repositories,
a broker and a coordinator; only this module knows they are PostgreSQL, RabbitMQ and
ZooKeeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from jobsched.adapters import postgres
from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.leader import PostgresLeaderStore
from jobsched.adapters.postgres.listen import (
    CANCEL_CHANNEL,
    WAKE_CHANNEL,
    WEBHOOK_CHANNEL,
    WakeListener,
)
from jobsched.adapters.postgres.replica import ReplicaReads
from jobsched.adapters.postgres.schema import startup_hint
from jobsched.adapters.postgres.secrets import PostgresSecrets
from jobsched.adapters.postgres.tokens import PostgresTokens
from jobsched.adapters.postgres.webhooks import DELIVERY_SESSION, PostgresWebhooks
from jobsched.adapters.postgres.worker import PostgresWorkerStore
from jobsched.adapters.postgres.workflows import PostgresWorkflowLeader, PostgresWorkflows
from jobsched.adapters.rabbitmq import RabbitBroker
from jobsched.adapters.zookeeper import ZooKeeperCoordinator, make_client, start_client
from jobsched.api.app import build_app
from jobsched.api.cluster import ClusterView
from jobsched.backoff import Backoff
from jobsched.crypto import SecretBox
from jobsched.health import Readiness, health_app
from jobsched.memory import release_free_memory_every, tune_collector
from jobsched.metrics import Metrics, instrument_api
from jobsched.scheduler.leader import Scheduler
from jobsched.scheduler.retention import run_retention
from jobsched.settings import ConfigError, Settings
from jobsched.worker.secrets import SecretResolver, warn_about_retired_sources
from jobsched.worker.webhooks import WebhookDeliverer
from jobsched.worker.worker import Worker, import_task_modules

log = logging.getLogger(__name__)

ROLES = ("api", "scheduler", "worker")
T = TypeVar("T")


async def _retrying(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event,
    hint: Callable[[BaseException], str | None] = lambda exc: None,
) -> T | None:
    """Call until it succeeds (capped backoff) or stop is set; a role waits, never crashes.
    ``hint`` names the fix of a failure only a person can mend (it is still retried: the
    fix may come while the role waits)."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:  # noqa: BLE001 - e.g. aiormq's own connection errors
            fix = hint(exc)
            log.warning("%s failed (%r); %sretrying", what, exc, f"{fix}; " if fix else "")
        await backoff.wait(stop)
    return None


async def _start_site(app: web.Application, host: str, port: int, label: str) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=5)
    try:
        await site.start()
    except OSError as exc:  # e.g. the port is taken: one line naming the setting, exit 2
        await runner.cleanup()
        setting = "JOBSCHED_API_PORT" if label == "api" else "JOBSCHED_METRICS_PORT"
        raise ConfigError(f"cannot listen on {host}:{port} ({label}): {exc.strerror or exc}; "
                          f"choose another port with {setting} (0 picks a free one)") from None
    log.info("%s listening on %s", label, ", ".join(str(a) for a in runner.addresses))
    return runner


def _broker(settings: Settings) -> RabbitBroker:
    return RabbitBroker(settings.amqp_url, settings.queue_names,
                        settings.dead_letter_exchange, settings.dead_letter_queue,
                        per_message=settings.message_attempts)


def _zookeeper(settings: Settings) -> Any:
    return make_client(settings.zookeeper_hosts, settings.zookeeper_chroot,
                       settings.zookeeper_session_timeout_s)


async def serve(settings: Settings, roles: set[str], *, migrate: bool = False) -> int:
    """Run the given roles until SIGTERM/SIGINT; returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tracemalloc.is_tracing():
        report = MemoryReport()
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: loop.run_in_executor(None, report.log_growth))
    import_task_modules(settings.imports)  # fail fast on a bad --import

    readiness = Readiness()
    metrics = Metrics("+".join(sorted(roles)), settings.instance)
    state: dict[str, Any] = {}
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[Any]] = []

    async def postgres_ready() -> None:
        jobs: PostgresJobs | None = state.get("jobs")
        if jobs is None:
            raise ConnectionError("not connected yet")
        await jobs.ping()

    readiness.add_check("postgres", postgres_ready)
    exit_code = 0
    try:
        if roles & {"scheduler", "worker"}:  # with the api too (--role all): as documented
            health = health_app(readiness)
            health.router.add_get("/metrics", metrics.handler())
            runners.append(await _start_site(health, settings.metrics_host, settings.metrics_port,
                                             "health"))
        if migrate:
            done = await _retrying("migration", lambda: postgres.migrate(settings.database_url),
                                   stop, startup_hint)
            if done is None:
                return 0
        pool = await _retrying("connecting to PostgreSQL",
                               lambda: postgres.create_pool(settings.database_url, max_size=20),
                               stop, startup_hint)
        if pool is None:
            return 0
        state["pool"] = pool
        await postgres.check_schema(pool)  # SchemaMismatch: refuse to start on another schema
        jobs = PostgresJobs(pool)
        state["jobs"] = jobs

        broker: RabbitBroker | None = None
        coordinator: ZooKeeperCoordinator | None = None
        if roles & {"scheduler", "worker"}:
            broker = _broker(settings)
            readiness.add_check("rabbitmq", _broker_check(broker))
            if await _retrying("connecting to RabbitMQ", broker.connect, stop) is None:
                return 0  # stopped before RabbitMQ answered
            state["broker"] = broker
            zk = _zookeeper(settings)
            state["zk"] = zk
            coordinator = ZooKeeperCoordinator(zk)
            readiness.add_check("zookeeper", coordinator.check)
            if not await start_client(zk, stop):
                return 0

        if "api" in roles:
            cluster = ClusterView(jobs, coordinator, broker, settings.queue_names,
                                  settings.dead_letter_queue)
            replica = None
            if settings.database_read_url:
                # Connects lazily (min_size 0): a replica that is down never delays the api.
                read_pool = await postgres.create_pool(settings.database_read_url, min_size=0)
                state["read_pool"] = read_pool
                state["read_jobs"] = PostgresJobs(read_pool)
                replica = ReplicaReads(state["read_jobs"], jobs)
                readiness.add_info("postgres_read", replica.describe)
            app = build_app(settings, jobs, PostgresTokens(pool), readiness,
                            unavailable=postgres.CONNECTION_ERRORS,
                            token_errors=postgres.DATABASE_ERRORS,
                            cluster=cluster, replica=replica,
                            secrets=PostgresSecrets(pool),
                            webhooks=PostgresWebhooks(pool),
                            workflows=PostgresWorkflows(pool))
            instrument_api(app, metrics)
            runners.append(await _start_site(app, settings.api_host, settings.api_port, "api"))
            if coordinator is None or broker is None:
                # The cluster view reads ZooKeeper and RabbitMQ; they connect in the
                # background so an api never waits on them to serve jobs.
                tasks.append(_task(_connect_cluster_view(settings, cluster, state, stop),
                                   "cluster-view", stop))

        if "scheduler" in roles:
            assert broker is not None and coordinator is not None
            leader_store = PostgresLeaderStore(pool)
            workflow_leader = PostgresWorkflowLeader(pool)
            scheduler = Scheduler(settings, leader_store, broker, coordinator, metrics,
                                  workflows=workflow_leader)
            readiness.add_info("scheduler", scheduler.describe)
            wakes = WakeListener(settings.database_url, lambda _: scheduler.wake.set(),
                                 WAKE_CHANNEL)
            tasks.append(_task(wakes.run(stop), "wake-listener", stop))
            tasks.append(_task(scheduler.run(stop), "scheduler", stop))
            tasks.append(_task(run_retention(
                leader_store, lambda: scheduler.epoch, settings.retention_days,
                settings.retention_interval_s, stop, metrics, workflow_leader),
                "retention", stop))

        if "worker" in roles:
            assert broker is not None
            warn_about_retired_sources(settings, os.environ)
            secrets = SecretResolver.from_settings(settings, store=PostgresSecrets(pool))
            worker = Worker(settings, PostgresWorkerStore(pool), broker,
                            coordinator=coordinator, metrics=metrics, secrets=secrets)
            readiness.add_info("worker", lambda: {"inflight": worker.inflight, **worker.stats})
            readiness.add_info("shell", worker.shell_status)
            # Cancellations serve the runs that are draining too: until the drain is over.
            cancels = WakeListener(settings.database_url, worker.take_away, CANCEL_CHANNEL)
            tasks.append(_task(cancels.run(worker.drained), "cancel-listener", stop))
            tasks.append(_task(worker.run(stop), "worker", stop))
            tasks += await _webhook_tasks(settings, state, metrics, readiness, stop)

        tasks.append(_task(release_free_memory_every(settings.memory_trim_interval_s, stop),
                           "memory-trim", stop))
        tune_collector(settings.gc_threshold)
        log.info("roles %s running as %s", ",".join(sorted(roles)), settings.instance)
        await stop.wait()
        log.info("stopping: draining")
        # The api stops accepting first; then the worker drains and the leader resigns.
        for runner in runners:
            await runner.cleanup()
        runners.clear()
        if tasks:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                exit_code = 1
    finally:
        for runner in runners:
            await runner.cleanup()
        for task in tasks:
            task.cancel()
        if "broker" in state:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(state["broker"].close(), 5)
        if "zk" in state:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(state["zk"].close(), 5)
        for name in ("jobs", "read_jobs"):  # their batchers, before the pools
            if name in state:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(state[name].close(), 5)
        for name in ("webhook_pool", "read_pool", "pool"):
            if name in state:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(state[name].close(), 5)
    log.info("stopped")
    return exit_code


async def _connect_cluster_view(settings: Settings, cluster: ClusterView,
                                state: dict[str, Any], stop: asyncio.Event) -> None:
    if cluster.coordinator is None:
        zk = _zookeeper(settings)
        state["zk"] = zk
        if await start_client(zk, stop):
            cluster.coordinator = ZooKeeperCoordinator(zk)
    if cluster.broker is None:
        broker = _broker(settings)
        if await _retrying("connecting to RabbitMQ", broker.connect, stop):
            state["broker"] = broker
            cluster.broker = broker


async def _webhook_tasks(settings: Settings, state: dict[str, Any], metrics: Metrics,
                         readiness: Readiness,
                         stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """The worker role delivers webhooks too (no fourth role): a delivery loop woken by
    NOTIFY, on a small pool of its own (its commits do not wait for the WAL flush: see
    adapters/postgres/webhooks.py). Without JOBSCHED_SECRETS_KEY it cannot sign, so it sends
    nothing (and says so)."""
    if not settings.secrets_key:
        log.warning("webhook deliveries are not sent by this worker: JOBSCHED_SECRETS_KEY "
                    "is not set, so it cannot sign them")
        readiness.add_info("webhooks", lambda: {"enabled": False,
                                                "reason": "JOBSCHED_SECRETS_KEY is not set"})
        return []
    pool = await postgres.create_pool(settings.database_url, min_size=0, max_size=4,
                                      server_settings=DELIVERY_SESSION)
    state["webhook_pool"] = pool
    deliverer = WebhookDeliverer(
        settings, PostgresWebhooks(pool), SecretBox.from_setting(settings.secrets_key),
        settings.egress_policy(), metrics)
    readiness.add_info("webhooks", deliverer.describe)
    wakes = WakeListener(settings.database_url, deliverer.on_notify, WEBHOOK_CHANNEL)
    return [_task(wakes.run(stop), "webhook-listener", stop),
            _task(deliverer.run(stop), "webhooks", stop)]


def _task(coro: Coroutine[Any, Any, None], name: str, stop: asyncio.Event) -> asyncio.Task[None]:
    """A role task; if it dies unexpectedly, the whole process stops (and exits non-zero)."""

    async def guarded() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; stopping the process", name)
            stop.set()
            raise

    return asyncio.create_task(guarded(), name=name)


class MemoryReport:
    """With tracemalloc on (e.g. PYTHONTRACEMALLOC=8 in the environment), each SIGUSR1 logs
    the allocation sites that grew most since the previous signal: how a slow leak is found
    in a long-running role. The comparison runs on a thread, so the role keeps its loop
    (and a leader its ZooKeeper session) while it is computed."""

    def __init__(self, top: int = 15) -> None:
        self.top = top
        self._last = tracemalloc.take_snapshot()

    def log_growth(self) -> None:
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.compare_to(self._last, "traceback")
        self._last = snapshot
        lines = [f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks at "
                 + " <- ".join(f"{f.filename}:{f.lineno}" for f in _innermost(stat.traceback))
                 for stat in stats[: self.top]]
        log.warning("memory growth since the last report:\n%s", "\n".join(lines))


def _innermost(traceback: tracemalloc.Traceback, frames: int = 6) -> list[tracemalloc.Frame]:
    """The allocating frame and its callers. tracemalloc keeps a traceback oldest frame
    first, so its head is the event loop's own machinery, the same for every site."""
    return list(reversed(traceback))[:frames]


def _broker_check(broker: RabbitBroker) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        if not broker.is_connected:
            raise ConnectionError("RabbitMQ not connected")

    return check
