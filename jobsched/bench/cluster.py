"""A throw-away deployment for one benchmark run: its own database, cluster name (so its
own RabbitMQ queues and ZooKeeper chroot) and role processes started as real
``python -m jobsched run --role ...`` subprocesses, exactly as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from jobsched.adapters import postgres
from jobsched.bench.procstat import CpuMeter
from jobsched.settings import Settings

TASK_MODULE = "jobsched.bench.tasks"


@dataclass(frozen=True)
class Services:
    """Where the shared servers are. ``postgres_url`` names the server, not a database."""

    postgres_url: str = "postgresql://postgres@127.0.0.1/"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    zookeeper_hosts: str = "127.0.0.1:2181"

    def database_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.postgres_url)._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def zookeeper_answers(hosts: str) -> bool:
    host, _, port = hosts.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.sendall(b"srvr")
            return b"Mode:" in sock.recv(4096)
    except OSError:
        return False


def ensure_zookeeper(hosts: str) -> None:
    """Start the repository's local ZooKeeper when nothing answers (development only)."""
    if zookeeper_answers(hosts):
        return
    script = Path(__file__).resolve().parents[2] / "scripts" / "zookeeper.sh"
    if not script.exists():
        raise RuntimeError(f"ZooKeeper does not answer at {hosts}; start it first")
    port = hosts.split(",")[0].rpartition(":")[2]
    subprocess.run([str(script), "start", "--port", port], check=True)


@dataclass
class RoleProcess:
    name: str
    roles: tuple[str, ...]
    port: int  # the api port for an api, else the health/metrics port
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def readyz(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n"
                               + self.log_tail())

    def terminate(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


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
            if "api" in proc.roles:
                return f"http://127.0.0.1:{proc.port}"
        raise RuntimeError("no api process started")

    async def __aenter__(self) -> BenchCluster:
        if self.external_database_url:
            return self
        ensure_zookeeper(self.services.zookeeper_hosts)
        await postgres.create_database(self.database_url)
        await postgres.migrate(self.database_url)
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
        env.update(self.settings)
        env.update(overrides)
        return env

    def start(self, *roles: str) -> RoleProcess:
        """Start one process hosting ``roles`` (not waiting for it: see ``wait_ready``)."""
        port = free_port()
        name = f"{'+'.join(roles)}-{sum(1 for p in self.processes if p.roles == roles) + 1}"
        overrides = {"JOBSCHED_INSTANCE": name}
        if "api" in roles or "all" in roles:
            overrides["JOBSCHED_API_PORT"] = str(port)
        else:
            overrides["JOBSCHED_METRICS_PORT"] = str(port)
        args = [sys.executable, "-m", "jobsched", "run"]
        for role in roles:
            args += ["--role", role]
        if "worker" in roles or "all" in roles:
            args += ["--import", TASK_MODULE]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(args, env=self.env(**overrides), stdout=log,
                                       stderr=subprocess.STDOUT)
        proc = RoleProcess(name, roles, port, log_path, process)
        self.processes.append(proc)
        self.meter.add(name, proc.pid)
        return proc

    async def wait_ready(self, *procs: RoleProcess, timeout: float = 30) -> None:
        """Until each answers /readyz 200, and a scheduler process holds the leadership."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                proc.check_alive()
                with contextlib.suppress(OSError, ValueError):
                    status, body = await asyncio.to_thread(proc.readyz)
                    leading = body.get("scheduler", {}).get("leader", True)
                    if status == 200 and leading:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} not ready in {timeout:.0f}s:\n"
                                       + proc.log_tail())
                await asyncio.sleep(0.05)

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
        for proc in self.processes:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in self.processes:
            proc.terminate()

    async def destroy(self) -> None:
        conn = await asyncpg.connect(self.services.database_url("postgres"), timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()
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
