"""The ``jobsched`` binary as real OS processes, talked to over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobsched_dev.processes import RoleProcess, free_port
from tests.helpers import (
    AMQP_URL,
    ROOT,
    clone_database,
    db_url,
    delete_queues,
    drop_database,
)

TASKS_DIR = Path(__file__).resolve().parent
#: The dashboard tests' browser: Debian's Chromium, driven by Playwright.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


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

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """One API request over plain blocking HTTP, its JSON answer (for tests driving
        Playwright's sync API, which runs an event loop on this thread); ``token``
        defaults to the cluster's admin token."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api + path, data=data, method=method,
            headers={"Authorization": f"Bearer {token or self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

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
        hosts_api = "api" in roles or "all" in roles
        if hosts_api:
            self.api_port = port
        overrides["JOBSCHED_API_PORT" if hosts_api else "JOBSCHED_METRICS_PORT"] = str(port)
        if hosts_api and set(roles) != {"api"}:  # a scheduler or worker in it serves metrics
            overrides.setdefault("JOBSCHED_METRICS_PORT", str(free_port()))
        proc = RoleProcess(name, roles, port, self.env(**overrides), self.tmp / f"{name}.log",
                           args=extra, cwd=ROOT)
        self.processes.append(proc.start())
        if wait:
            proc.wait_ready(30)
            if hosts_api:
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per dashboard test module."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
