"""The chaos suite's deployment: one ``DevCluster`` (a 3-member ZooKeeper ensemble on free
ports, 3 schedulers, 2 api processes, 2 workers, each its own OS process) on a private
PostgreSQL and the machine's RabbitMQ, shared by the suite. Before each test every part is
brought back to health, so a test that fails half-way does not take the next one down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobsched_dev.api_client import ApiClient
from jobsched_dev.devcluster import DevCluster
from jobsched_dev.processes import RoleProcess, free_port
from jobsched_dev.zookeeper import free_zookeeper_base
from tests.chaos.harness import (
    PG_BIN,
    Fire,
    PrivatePostgres,
    RunLog,
    fetch_fires,
    rabbitmq_app_running,
    rabbitmq_controllable,
    start_rabbitmq_app,
    stop_jobs,
)
from tests.helpers import AMQP_URL, ROOT, delete_queues

HERE = Path(__file__).resolve().parent
SESSION_TIMEOUT_S = 3.0
LEASE_S = 3.0
DRAIN_TIMEOUT_S = 4.0
# The ensemble's tickTime: 500 ms by default (a dead leader's session ends at most half a
# second after its timeout); CHAOS_ZOOKEEPER_TICK_MS=1000 measures take-overs at the tick
# that compose.yaml and the Kubernetes manifests configure (docs/deploy.md).
ZOOKEEPER_TICK_MS = int(os.environ.get("CHAOS_ZOOKEEPER_TICK_MS", "500"))
# Shorter than the defaults so that every recovery fits in a few minutes of test; the
# docs (docs/reliability.md) say which numbers scale with which setting.
CHAOS_SETTINGS = {
    "JOBSCHED_ZOOKEEPER_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
    "JOBSCHED_WORKER_LEASE_S": str(LEASE_S),
    "JOBSCHED_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    "JOBSCHED_REPUBLISH_AFTER_S": "3",
    "JOBSCHED_SCHEDULER_POLL_S": "0.5",
    "JOBSCHED_AUTH_ENABLED": "false",
}


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"the chaos suite runs its own PostgreSQL: no initdb under {PG_BIN} "
                    "(set JOBSCHED_TEST_PG_BIN)")
    postgres = PrivatePostgres(free_port()).init()
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.destroy()


@contextlib.contextmanager
def chaos_deployment(database_url: str, name: str, request: pytest.FixtureRequest,
                     env: Mapping[str, str] = (), **sizes: int) -> Iterator[DevCluster]:
    """A DevCluster with the suite's settings on ``database_url``, its own ZooKeeper
    ensemble and queues; stopped and cleaned up after (its logs kept if a test failed)."""
    # Not under pytest's temporary folders, which keep only the last few sessions' (and
    # other test runs on the machine rotate them): the logs stay if a test failed.
    directory = Path(tempfile.mkdtemp(prefix=f"jobsched-{name}-"))
    role_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    role_env.update(CHAOS_SETTINGS, **dict(env),
                    PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
                    CHAOS_RUNLOG=str(directory / "runs.jsonl"))
    cluster = DevCluster(
        directory=directory, database_url=database_url, amqp_url=AMQP_URL,
        cluster=f"{name.replace('-', '')}{uuid.uuid4().hex[:8]}",
        zookeeper_port=free_zookeeper_base(), zookeeper_tick_ms=ZOOKEEPER_TICK_MS,
        api_port=0, health_port=0, imports=("chaos_tasks",), env=role_env, **sizes,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        asyncio.run(delete_queues(cluster.cluster))
        if request.session.testsfailed:
            print(f"\nchaos: role and ZooKeeper logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def chaos_cluster(private_postgres: PrivatePostgres,
                  request: pytest.FixtureRequest) -> Iterator[DevCluster]:
    with chaos_deployment(private_postgres.url("jobsched"), "chaos", request) as cluster:
        yield cluster


def heal(cluster: DevCluster, postgres: PrivatePostgres) -> None:
    """Every server and process back up and ready (what a supervisor would do)."""
    if not postgres.is_running():
        postgres.start()
    if rabbitmq_controllable() and not rabbitmq_app_running():
        start_rabbitmq_app()
    if any(cluster.zookeeper.pid(m) is None for m in (1, 2, 3)):
        cluster.zookeeper.start()
    for proc in cluster.processes.values():
        proc.resume()
        if not proc.alive:
            proc.start()
    cluster.wait_ready(90)


@dataclass
class Chaos:
    """One test's view of the shared cluster: its jobs, its runs, its measurements."""

    cluster: DevCluster
    postgres: PrivatePostgres
    api: ApiClient
    session: aiohttp.ClientSession
    runlog: RunLog
    jobs: list[str] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.cluster.database_url

    async def create(self, specs: Sequence[dict[str, Any]]) -> list[str]:
        created = await asyncio.gather(*(self.api.create(spec) for spec in specs))
        ids = [job["id"] for job in created]
        self.jobs.extend(ids)
        return ids

    async def fires(self, job_ids: Sequence[str] | None = None) -> list[Fire]:
        return await fetch_fires(self.database_url, job_ids or self.jobs)

    async def stop_jobs(self) -> None:
        await stop_jobs(self.database_url, self.jobs)

    async def readyz(self, proc: RoleProcess, timeout: float = 1.0) -> dict[str, Any] | None:
        """The process's readiness report, or None if it does not answer in time."""
        try:
            async with self.session.get(f"{proc.url}/readyz",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def leader(self, *, newer_than: int = -2, timeout: float = 20,
                     skip: Sequence[RoleProcess] = ()) -> tuple[RoleProcess, int]:
        """The scheduler that reports itself leader with an epoch above ``newer_than``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            candidates = [p for p in self.cluster.role("scheduler") if p.alive and p not in skip]
            reports = await asyncio.gather(*(self.readyz(p, 0.5) for p in candidates))
            for proc, report in zip(candidates, reports, strict=True):
                state = (report or {}).get("scheduler") or {}
                epoch = state.get("epoch")
                if state.get("leader") and epoch is not None and epoch > newer_than:
                    return proc, int(epoch)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no leader with an epoch above {newer_than} in {timeout:g}s")

    async def first_fire_of_epoch_above(self, epoch: int, timeout: float = 20) -> float:
        """When (epoch seconds, database clock) the first execution of a newer leader was
        created."""
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            while time.monotonic() < deadline:
                first = await conn.fetchval(
                    "SELECT min(queued_at) FROM executions WHERE epoch > $1 "
                    "AND job_id = ANY($2::uuid[])", epoch, self.jobs)
                if first is not None:
                    return float(first.timestamp())
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        raise AssertionError(f"no fire by a leader newer than epoch {epoch} in {timeout:g}s")


@pytest.fixture
async def chaos(chaos_cluster: DevCluster,
                private_postgres: PrivatePostgres) -> AsyncIterator[Chaos]:
    heal(chaos_cluster, private_postgres)
    runlog = RunLog(Path(chaos_cluster.env["CHAOS_RUNLOG"]))
    runlog.mark()
    async with aiohttp.ClientSession() as session:
        helper = Chaos(chaos_cluster, private_postgres,
                       ApiClient(session, chaos_cluster.api_urls, timeout_s=10), session,
                       runlog)
        try:
            yield helper
        finally:
            if private_postgres.is_running():
                await helper.stop_jobs()
