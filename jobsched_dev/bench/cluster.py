"""A throw-away deployment for one benchmark run: its own database, cluster name (so its
own RabbitMQ queues and ZooKeeper chroot) and role processes started as real
``python -m jobsched run --role ...`` subprocesses, exactly as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from jobsched.adapters import postgres
from jobsched.settings import Settings
from jobsched_dev.bench.procstat import CpuMeter
from jobsched_dev.processes import RoleProcess, free_port, source_env
from jobsched_dev.zookeeper import ensure_zookeeper

TASK_MODULE = "jobsched_dev.bench.tasks"


@dataclass(frozen=True)
class Services:
    """Where the shared servers are. ``postgres_url`` names the server, not a database."""

    postgres_url: str = "postgresql://postgres@127.0.0.1/"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    zookeeper_hosts: str = "127.0.0.1:2181"

    def database_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.postgres_url)._replace(path=f"/{name}"))


async def copy_database(services: Services, template: str, name: str) -> None:
    """``name`` as a file copy of ``template`` (the default strategy of PostgreSQL 15 writes
    every block of a copy to the WAL: minutes for a history of millions of rows)."""
    conn = await asyncpg.connect(services.database_url("postgres"), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'
                           " STRATEGY FILE_COPY")
    finally:
        await conn.close()


async def drop_database(services: Services, name: str) -> None:
    conn = await asyncpg.connect(services.database_url("postgres"), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class BenchCluster:
    """One run's deployment. ``async with`` creates the database and cleans everything up."""

    services: Services = field(default_factory=Services)
    log_level: str = "INFO"
    keep: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # extra JOBSCHED_* variables
    name: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    processes: list[RoleProcess] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jobsched-bench-")))
    meter: CpuMeter = field(default_factory=CpuMeter)
    #: A running deployment's database: nothing is created, started or dropped.
    external_database_url: str | None = None
    #: A migrated database to copy instead of migrating a new one (a history written once
    #: for several runs: ``bench scale --history``).
    template: str | None = None
    #: Each role gets SIGTERM if the benchmark dies (Linux), so that a killed benchmark
    #: leaves no role behind. Only for a benchmark that starts every process from its
    #: event loop's thread (see RoleProcess: the signal follows the forking thread).
    die_with_parent: bool = False
    #: Another commit's exported tree (``--vs-commit``): its migrations make the schema
    #: and its roles and CLI run, from that folder; the benchmark around them is this one.
    source: Path | None = None

    @property
    def database(self) -> str:
        return f"jobsched_{self.name}"

    @property
    def database_url(self) -> str:
        return self.external_database_url or self.services.database_url(self.database)

    def job_name(self, scenario: str) -> str:
        """The name of this run's jobs: runs on a shared database stay apart."""
        return f"bench-{scenario}-{self.name}"

    @property
    def api_url(self) -> str:
        for proc in self.processes:
            if proc.hosts("api"):
                return proc.url
        raise RuntimeError("no api process started")

    async def __aenter__(self) -> BenchCluster:
        if self.external_database_url:
            return self
        ensure_zookeeper(self.services.zookeeper_hosts)
        if self.template:
            await copy_database(self.services, self.template, self.database)
            return self
        await postgres.create_database(self.database_url)
        if self.source is None:
            await postgres.migrate(self.database_url)
        else:
            done = await asyncio.to_thread(self.run_python, "-m", "jobsched", "migrate",
                                           timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"`jobsched migrate` of {self.source} exited "
                                   f"{done.returncode}: {done.stderr[-2000:]}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop_all)
        if not self.keep and not self.external_database_url:
            await self.destroy()

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
        env.update(
            JOBSCHED_DATABASE_URL=self.database_url,
            JOBSCHED_AMQP_URL=self.services.amqp_url,
            JOBSCHED_ZOOKEEPER_HOSTS=self.services.zookeeper_hosts,
            JOBSCHED_CLUSTER=self.name,
            JOBSCHED_LOG_LEVEL=self.log_level,
            PYTHONUNBUFFERED="1",
        )
        if self.source is not None:  # first on the path: its jobsched, not this one
            env["PYTHONPATH"] = str(self.source)
        env.update(self.settings)
        env.update(overrides)
        return env

    def run_python(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` as this deployment's roles run: its environment, and from the
        other commit's tree (``source``) when there is one; output captured."""
        return subprocess.run([sys.executable, *args], env=source_env(self.env()),
                              cwd=self.source, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, *roles: str) -> RoleProcess:
        """Start one process hosting ``roles`` (not waiting for it: see ``wait_ready``)."""
        port = free_port()
        name = f"{'+'.join(roles)}-{sum(1 for p in self.processes if p.roles == roles) + 1}"
        overrides = {"JOBSCHED_INSTANCE": name}
        hosts_api = "api" in roles or "all" in roles
        overrides["JOBSCHED_API_PORT" if hosts_api else "JOBSCHED_METRICS_PORT"] = str(port)
        if hosts_api and set(roles) != {"api"}:  # a scheduler or worker in it serves metrics
            overrides["JOBSCHED_METRICS_PORT"] = str(free_port())
        runs_tasks = "worker" in roles or "all" in roles
        proc = RoleProcess(name, roles, port, self.env(**overrides),
                           self.log_dir / f"{name}.log",
                           args=("--import", TASK_MODULE) if runs_tasks else (),
                           cwd=self.source, die_with_parent=self.die_with_parent).start()
        self.processes.append(proc)
        assert proc.pid is not None
        self.meter.add(name, proc.pid)
        return proc

    async def wait_ready(self, *procs: RoleProcess, timeout: float = 30) -> None:
        """Until each answers /readyz 200, and a scheduler process holds the leadership."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            await asyncio.to_thread(proc.wait_ready, max(0.0, deadline - time.monotonic()),
                                    leader=True)

    async def start_ready(self, *roles: str, count: int = 1) -> list[RoleProcess]:
        """Start ``count`` processes of ``roles`` and wait for them (none on a running
        deployment: its own processes do the work)."""
        if self.external_database_url:
            return []
        procs = [self.start(*roles) for _ in range(count)]
        await self.wait_ready(*procs)
        return procs

    async def start_pipeline(self, workers: int) -> list[RoleProcess]:
        """A scheduler and ``workers`` workers, started together and ready."""
        if self.external_database_url:
            return []
        procs = [self.start("scheduler")] + [self.start("worker") for _ in range(workers)]
        await self.wait_ready(*procs)
        return procs

    def stop_all(self) -> None:
        """SIGTERM to all at once (they drain in parallel), then wait for each."""
        for proc in self.processes:
            proc.signal(signal.SIGCONT)
            proc.signal(signal.SIGTERM)
        for proc in self.processes:
            proc.wait_stopped(timeout=20)

    async def destroy(self) -> None:
        await drop_database(self.services, self.database)
        names = Settings(cluster=self.name)
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(self.services.amqp_url, timeout=10)
            try:
                channel = await connection.channel()
                for queue in (*names.queue_names.values(), names.dead_letter_queue):
                    await channel.queue_delete(queue)
                await channel.exchange_delete(names.dead_letter_exchange)
            finally:
                await connection.close()
