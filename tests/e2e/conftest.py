"""The ``jobsched`` binary as real OS processes, talked to over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.client import CLUSTER_TOKENS
from tests.helpers import (
    AMQP_URL,
    ROOT,
    clone_database,
    db_url,
    delete_queues,
    drop_database,
    free_port,
)

TASKS_DIR = Path(__file__).resolve().parent


@dataclass
class RoleProcess:
    roles: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0

    def start(self) -> RoleProcess:
        args = [sys.executable, "-m", "jobsched", "run"]
        for role in self.roles:
            args += ["--role", role]
        args += list(self.extra)
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, env=self.env, stdout=self.log, stderr=self.log,
                                        cwd=ROOT)
        return self

    def readyz(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.roles} exited {self.process.returncode}:\n"
                                     + self.log_path.read_text()[-3000:])
            try:
                status, body = self.readyz()
                if status == 200:
                    return body
                last = body
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{self.roles} not ready: {last}\n"
                             + self.log_path.read_text()[-3000:])

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class LocalCluster:
    """One deployment: a database, a cluster name, and the role processes started on it.
    ``token`` is an admin token of namespace "default" (made with `jobsched token create`)."""

    tmp: Path
    zookeeper: str
    database: str = ""
    cluster: str = field(default_factory=lambda: f"e{uuid.uuid4().hex[:10]}")
    processes: list[RoleProcess] = field(default_factory=list)
    api_port: int = 0
    token: str = ""

    @property
    def database_url(self) -> str:
        return db_url(self.database)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
        env.update(
            JOBSCHED_DATABASE_URL=self.database_url,
            JOBSCHED_AMQP_URL=AMQP_URL,
            JOBSCHED_ZOOKEEPER_HOSTS=self.zookeeper,
            JOBSCHED_CLUSTER=self.cluster,
            JOBSCHED_SCHEDULER_POLL_S="0.5",
            PYTHONPATH=os.pathsep.join([str(TASKS_DIR), str(ROOT)]),
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env

    def jobsched(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``jobsched`` command against this deployment's database."""
        return subprocess.run([sys.executable, "-m", "jobsched", *args], env=self.env(),
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=check)

    def create_token(self, namespace: str = "default", role: str = "admin",
                     name: str | None = None) -> str:
        args = ["token", "create", "--namespace", namespace, "--role", role]
        done = self.jobsched(*args, *(["--name", name] if name else []))
        return done.stdout.strip()

    def start(self, *roles: str, extra: tuple[str, ...] = (), wait: bool = True,
              **env: str) -> RoleProcess:
        port = free_port()
        name = f"{'+'.join(roles)}-{len(self.processes)}"
        overrides = {"JOBSCHED_INSTANCE": name, **env}
        if "api" in roles or "all" in roles:
            self.api_port = port
            overrides["JOBSCHED_API_PORT"] = str(port)
            CLUSTER_TOKENS[self.api] = self.token
        else:
            overrides["JOBSCHED_METRICS_PORT"] = str(port)
        proc = RoleProcess(roles, self.env(**overrides), self.tmp / f"{name}.log", extra,
                           health_port=port)
        self.processes.append(proc.start())
        if wait:
            proc.wait_ready()
            if "api" in roles or "all" in roles:
                # start() is called from async tests too: run the query on a thread.
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, self._keep_token()).result()
        return proc

    async def _keep_token(self) -> None:
        """Store the admin token again if a test replaced the database (e.g. --migrate on
        an empty one); a no-op otherwise."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(
                "INSERT INTO api_tokens (digest, hint, namespace, role, name) "
                "VALUES (sha256($1::text::bytea), left($1, 8), 'default', 'admin', 'e2e') "
                "ON CONFLICT (digest) DO NOTHING", self.token)
        finally:
            await conn.close()

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.terminate(timeout=15)


def _new_cluster(tmp: Path, zookeeper: str, template: str) -> LocalCluster:
    cluster = LocalCluster(tmp=tmp, zookeeper=zookeeper)
    cluster.database = asyncio.run(clone_database(template))
    cluster.token = cluster.create_token(name="e2e")
    return cluster


def _teardown(cluster: LocalCluster) -> None:
    cluster.stop_all()
    CLUSTER_TOKENS.pop(cluster.api, None)
    asyncio.run(drop_database(cluster.database))
    asyncio.run(delete_queues(cluster.cluster))


@pytest.fixture
def local_cluster(tmp_path: Path, zookeeper: str, template_db: str) -> Iterator[LocalCluster]:
    """A fresh, empty deployment; the test starts the processes it needs."""
    cluster = _new_cluster(tmp_path, zookeeper, template_db)
    yield cluster
    _teardown(cluster)


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                    template_db: str) -> Iterator[LocalCluster]:
    """api, scheduler and worker as three processes, shared by a module's tests."""
    cluster = _new_cluster(tmp_path_factory.mktemp("cluster"), zookeeper, template_db)
    cluster.start("scheduler")
    cluster.start("worker", extra=("--import", "sample_tasks"))
    cluster.start("api")
    yield cluster
    _teardown(cluster)
