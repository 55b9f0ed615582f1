"""A whole deployment on one machine, every part its own OS process: a 3-node ZooKeeper
ensemble on loopback, schedulers, api processes and workers (after migrating the database).

People start it with ``jobsched dev cluster``; the chaos tests drive the same
:class:`DevCluster` from Python (kill, pause, restart one process or one ZooKeeper member).
PostgreSQL and RabbitMQ are not started here: the cluster uses the servers its URLs name.

Everything here is synchronous and only spawns and signals processes, so a test can call
it from its event loop; waiting on readiness is left to the caller where it matters.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobsched_dev.processes import RoleProcess, free_port, port_is_free
from jobsched_dev.zookeeper import ZooKeeperEnsemble

ROLE_ORDER = ("scheduler", "api", "worker")


class ClusterError(RuntimeError):
    """The cluster could not be started (a port in use, a server not answering, ...)."""


@dataclass
class DevCluster:
    """ZooKeeper ensemble + schedulers + api processes + workers, one deployment.

    ``api_port``/``health_port`` are the first of consecutive ports (0: any free port).
    ``env`` is the base environment of every role process (``JOBSCHED_*`` settings), to
    which the cluster adds the addresses and each process's name and port.
    """

    directory: Path
    database_url: str
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    cluster: str = "dev"
    zookeeper_port: int = 2281
    zookeeper_tick_ms: int = 500
    api_port: int = 8080
    health_port: int = 9100
    schedulers: int = 3
    apis: int = 2
    workers: int = 2
    imports: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    die_with_parent: bool = False
    zookeeper: ZooKeeperEnsemble = field(init=False)
    processes: dict[str, RoleProcess] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.zookeeper = ZooKeeperEnsemble(self.zookeeper_port, self.directory / "zookeeper",
                                           self.zookeeper_tick_ms)
        self._plan()

    # -- layout ---------------------------------------------------------------------------

    def _ports(self, first: int, count: int) -> list[int]:
        if first == 0:
            return [free_port() for _ in range(count)]
        return [first + i for i in range(count)]

    def _plan(self) -> None:
        api_ports = self._ports(self.api_port, self.apis)
        health_ports = self._ports(self.health_port, self.schedulers + self.workers)
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        for i in range(self.schedulers):
            self._add("scheduler", i + 1, health_ports[i])
        for i in range(self.apis):
            self._add("api", i + 1, api_ports[i])
        for i in range(self.workers):
            args = tuple(a for module in self.imports for a in ("--import", module))
            self._add("worker", i + 1, health_ports[self.schedulers + i], args)

    def _add(self, role: str, number: int, port: int, args: tuple[str, ...] = ()) -> None:
        name = f"{role}-{number}"
        env = dict(self.env)
        env.update(
            JOBSCHED_DATABASE_URL=self.database_url,
            JOBSCHED_AMQP_URL=self.amqp_url,
            JOBSCHED_ZOOKEEPER_HOSTS=self.zookeeper.hosts,
            JOBSCHED_CLUSTER=self.cluster,
            JOBSCHED_INSTANCE=name,
            PYTHONUNBUFFERED="1",
        )
        env["JOBSCHED_API_PORT" if role == "api" else "JOBSCHED_METRICS_PORT"] = str(port)
        self.processes[name] = RoleProcess(
            name, (role,), port, env, self.directory / "logs" / f"{name}.log", args,
            new_session=True, die_with_parent=self.die_with_parent)

    def role(self, role: str) -> list[RoleProcess]:
        return [p for p in self.processes.values() if p.hosts(role)]

    @property
    def api_urls(self) -> list[str]:
        return [p.url for p in self.role("api")]

    def __getitem__(self, name: str) -> RoleProcess:
        return self.processes[name]

    # -- lifecycle ------------------------------------------------------------------------

    def check_ports(self) -> None:
        self.zookeeper.check_ports()
        busy = [f"{p.name}: {p.port}" for p in self.processes.values()
                if not p.alive and not port_is_free(p.port)]
        if busy:
            raise ClusterError(f"ports in use: {', '.join(busy)}")

    def migrate(self, create_database: bool = True) -> list[str]:
        from jobsched.adapters import postgres

        async def run() -> list[str]:
            if create_database:
                await postgres.create_database(self.database_url)
            return await postgres.migrate(self.database_url)

        try:
            return asyncio.run(run())
        except (OSError, ConnectionError) as exc:
            raise ClusterError(f"cannot reach PostgreSQL: {exc}") from exc

    def start(self, *, migrate: bool = True, create_database: bool = True,
              ready_timeout: float = 90) -> None:
        """ZooKeeper first, then the migration, then every role at once; returns when all
        report ready (raises ClusterError, with the log tail, otherwise)."""
        self.check_ports()
        self.zookeeper.start()
        if migrate:
            self.migrate(create_database)
        for name in self._start_order():
            self.processes[name].start()
        self.wait_ready(ready_timeout)

    def _start_order(self) -> list[str]:
        return [p.name for role in ROLE_ORDER for p in self.role(role)]

    def wait_ready(self, timeout: float = 60, names: Sequence[str] | None = None) -> None:
        waiting = list(names or self.processes)
        deadline = time.monotonic() + timeout
        while waiting:
            for name in list(waiting):
                proc = self.processes[name]
                if not proc.alive:
                    raise ClusterError(f"{name} exited ({proc.process and proc.process.poll()})"
                                       f":\n{proc.log_tail()}")
                if proc.is_ready(timeout=1):
                    waiting.remove(name)
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{self.processes[n].log_tail(1500)}" for n in waiting)
                raise ClusterError(f"not ready after {timeout:g}s: {waiting}\n{tails}")
            if waiting:
                time.sleep(0.1)

    def restart(self, name: str, wait: bool = False, timeout: float = 60) -> RoleProcess:
        proc = self.processes[name]
        if proc.alive:
            proc.terminate()
        proc.restarts += 1
        proc.start()
        if wait:
            self.wait_ready(timeout, [name])
        return proc

    def leader(self) -> RoleProcess | None:
        """The scheduler that reports itself leader now (None while there is none)."""
        for proc in self.role("scheduler"):
            if proc.alive and proc.is_leader():
                return proc
        return None

    def stop(self, timeout: float = 30) -> None:
        """apis first (stop accepting), then workers (drain), then schedulers (standbys
        before the leader, so leadership does not hop), then ZooKeeper."""
        leader = self.leader()
        groups = [self.role("api"), self.role("worker"),
                  [p for p in self.role("scheduler") if p is not leader],
                  [leader] if leader is not None else []]
        for group in groups:
            for proc in group:
                proc.signal(signal.SIGCONT)
                proc.signal(signal.SIGTERM)
            for proc in group:
                proc.terminate(timeout)
        self.zookeeper.stop()

    def __enter__(self) -> DevCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- supervision ----------------------------------------------------------------------

    def supervise(self, stopping: Callable[[], bool], report: Callable[[str], None],
                  poll_s: float = 0.5) -> None:
        """Restart what dies (roles with capped backoff, ZooKeeper members) until
        ``stopping()`` is true."""
        backoff: dict[str, float] = {}
        due: dict[str, float] = {}
        zk_restart: subprocess.Popen[bytes] | None = None
        while not stopping():
            now = time.monotonic()
            for proc in self.processes.values():
                if proc.alive:
                    if now - proc.started_at > 60:
                        backoff.pop(proc.name, None)
                    continue
                if proc.name not in due:
                    delay = backoff.get(proc.name, 0.5)
                    code = proc.process.poll() if proc.process else None
                    report(f"{proc.name} exited with code {code}; restarting in {delay:g}s "
                           f"(log {proc.log_path})")
                    due[proc.name] = now + delay
                    backoff[proc.name] = min(delay * 2, 30.0)
                elif now >= due[proc.name]:
                    del due[proc.name]
                    proc.restarts += 1
                    proc.start()
            dead = [m for m in (1, 2, 3) if self.zookeeper.pid(m) is None]
            if dead and (zk_restart is None or zk_restart.poll() is not None):
                report(f"ZooKeeper member(s) {dead} not running; restarting")
                zk_restart = subprocess.Popen(self.zookeeper.command("start"),
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
            time.sleep(poll_s)
        if zk_restart is not None and zk_restart.poll() is None:
            zk_restart.wait(60)

    def describe(self) -> Iterator[str]:
        yield f"jobsched dev cluster {self.cluster!r}: files under {self.directory}"
        for member, port in enumerate(self.zookeeper.ports, start=1):
            yield (f"  zookeeper  zk-{member:<9} 127.0.0.1:{port:<6} "
                   f"{self.zookeeper.mode(member) or 'not serving':<11} "
                   f"pid {self.zookeeper.pid(member)}")
        yield f"  postgresql {_masked(self.database_url)}"
        yield f"  rabbitmq   {_masked(self.amqp_url)}  queue jobsched.{self.cluster}.executions"
        for name in self._start_order():
            proc = self.processes[name]
            role = "+".join(proc.roles)
            what = "api " if proc.hosts("api") else "health"
            yield (f"  {role:<10} {name:<12} {what} {proc.url:<24} pid {proc.pid}  "
                   f"log {proc.log_path}")


def _masked(url: str) -> str:
    from jobsched.settings import mask_url

    return mask_url(url)
