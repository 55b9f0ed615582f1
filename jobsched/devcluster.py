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
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

ROLE_ORDER = ("scheduler", "api", "worker")
ZOOKEEPER_SCRIPT_ENV = "JOBSCHED_ZOOKEEPER_SCRIPT"
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The cluster could not be started (a port in use, a server not answering, ...)."""


def zookeeper_script() -> Path:
    """scripts/zookeeper.sh of the source tree (or the file JOBSCHED_ZOOKEEPER_SCRIPT names)."""
    given = os.environ.get(ZOOKEEPER_SCRIPT_ENV)
    script = Path(given) if given else Path(__file__).resolve().parents[1] / "scripts" / \
        "zookeeper.sh"
    if not script.is_file():
        raise ClusterError(f"{script} not found: the dev cluster runs from a source checkout "
                           f"(or set {ZOOKEEPER_SCRIPT_ENV})")
    return script


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, so no role outlives it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --- ZooKeeper ---------------------------------------------------------------------------


def zookeeper_ports(base: int) -> list[int]:
    """Every port an ensemble at ``base`` uses: client, peer and election ports, as
    scripts/zookeeper.sh lays them out (peer/election ports shifted by base - 2181)."""
    shift = base - 2181
    return [p + i for p in (base, 2888 + shift, 3888 + shift) for i in range(3)]


def free_zookeeper_base(low: int = 20_000, high: int = 28_000) -> int:
    """A base port whose nine ensemble ports are all free (for tests: never the 2181 one)."""
    for base in range(low + os.getpid() % 997 * 7, high, 7):
        if all(port_is_free(p) for p in zookeeper_ports(base)):
            return base
    raise ClusterError("no free ports for a ZooKeeper ensemble")


def zookeeper_mode(port: int, timeout: float = 1.0) -> str | None:
    """The member's mode (leader, follower, standalone) if it serves clients, else None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"srvr")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return None
    for line in answer.decode(errors="replace").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class ZooKeeperEnsemble:
    """Three members on 127.0.0.1 run by scripts/zookeeper.sh; data kept under ``directory``
    (keep it: the leader's fencing epoch is the sequence number of its election znode, which
    a fresh ensemble restarts from zero)."""

    base_port: int
    directory: Path
    # Half-second ticks: a dead holder's session ends at most 0.5 s after its timeout
    # (1 s ticks made kill -9 take-overs take up to timeout + 1.1 s).
    tick_ms: int = 500
    script: Path = field(default_factory=zookeeper_script)

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(3)]

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def command(self, action: str) -> list[str]:
        return [str(self.script), action, "--ensemble", "--port", str(self.base_port),
                "--dir", str(self.directory), "--tick-ms", str(self.tick_ms)]

    def _run(self, action: str, timeout: float = 90) -> str:
        result = subprocess.run(self.command(action), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0 and action != "status":
            raise ClusterError(f"zookeeper.sh {action} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def check_ports(self) -> None:
        if any(zookeeper_mode(p) for p in self.ports):
            return  # our own ensemble, still running: start() leaves it alone
        busy = [p for p in zookeeper_ports(self.base_port) if not port_is_free(p)]
        if busy:
            raise ClusterError(f"ZooKeeper ports in use: {busy} (choose another "
                               "--zookeeper-port)")

    def start(self) -> None:
        """Start the members that are not serving and wait until all three serve (the
        script's start is idempotent: this also brings back killed members)."""
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def pid(self, member: int) -> int | None:
        """The JVM pid of member 1, 2 or 3, if it is alive."""
        try:
            pid = int((self.directory / f"zk{member}" / "zookeeper.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self, member: int, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(member)
        if pid is not None:
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                _wait_gone(pid)

    def mode(self, member: int) -> str | None:
        return zookeeper_mode(self.ports[member - 1])

    def leader(self) -> int | None:
        """Which member (1-3) leads the ensemble now."""
        for member in (1, 2, 3):
            if self.mode(member) == "leader":
                return member
        return None


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:  # a zombie counts as gone
                if stat.read().split(b") ", 1)[-1][:1] == b"Z":
                    return
        except OSError:
            return
        time.sleep(0.02)


# --- role processes ----------------------------------------------------------------------


@dataclass
class RoleProcess:
    """One ``jobsched run --role ROLE`` process. ``port`` is its api port (api) or its
    health/metrics port (scheduler, worker); both serve /healthz and /readyz."""

    name: str
    role: str
    port: int
    env: dict[str, str]
    log_path: Path
    args: tuple[str, ...] = ()
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jobsched", "run", "--role", self.role, *self.args]

    def start(self) -> RoleProcess:
        if self.alive:
            return self
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the launcher's terminal reaches only the
                # launcher, which then stops the roles in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.started_at = time.monotonic()
        return self

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM (an orderly drain), then SIGKILL after ``timeout``; the exit code."""
        if self.process is None:
            return None
        self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def readyz(self, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        """(status, report) of /readyz; raises OSError if nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body else {}

    def is_ready(self, timeout: float = 2.0) -> bool:
        try:
            return self.readyz(timeout)[0] == 200
        except (OSError, ValueError):
            return False

    def is_leader(self, timeout: float = 1.0) -> bool:
        """Whether this scheduler reports itself leader (False if it does not answer)."""
        try:
            report = self.readyz(timeout)[1]
        except (OSError, ValueError):
            return False
        return bool((report.get("scheduler") or {}).get("leader"))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


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
        self.processes[name] = RoleProcess(name, role, port, env,
                                           self.directory / "logs" / f"{name}.log", args,
                                           self.die_with_parent)

    def role(self, role: str) -> list[RoleProcess]:
        return [p for p in self.processes.values() if p.role == role]

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
            what = "api " if proc.role == "api" else "health"
            yield (f"  {proc.role:<10} {name:<12} {what} {proc.url:<24} pid {proc.pid}  "
                   f"log {proc.log_path}")


def _masked(url: str) -> str:
    from jobsched.settings import mask_url

    return mask_url(url)


# --- `jobsched dev cluster` --------------------------------------------------------------


@click.group()
def dev() -> None:
    """Local development helpers."""


@dev.command("cluster")
@click.option("--database-url", help="PostgreSQL URL (default: the settings' "
              "JOBSCHED_DATABASE_URL); created if missing, then migrated.")
@click.option("--amqp-url", help="RabbitMQ URL (default: the settings' JOBSCHED_AMQP_URL).")
@click.option("--cluster", "name", help="Cluster name: its queues and ZooKeeper paths "
              "(default: the settings' JOBSCHED_CLUSTER).")
@click.option("--zookeeper-port", default=2281, show_default=True, type=click.IntRange(1024,
              60000), help="First client port of the 3-node ensemble (three consecutive "
              "ports; peer/election ports shifted from 2888/3888 by PORT-2181).")
@click.option("--api-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the first api process, the next ones follow (0: any free).")
@click.option("--health-port", default=9100, show_default=True,
              type=click.IntRange(0, 65535), help="Health/metrics port of the first "
              "scheduler, then the other schedulers and the workers follow (0: any free).")
@click.option("--schedulers", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--apis", default=2, show_default=True, type=click.IntRange(1, 9))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 9))
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions the workers run (repeatable).")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Logs and ZooKeeper data (default /tmp/jobsched-dev-CLUSTER).")
@click.option("--no-supervise", is_flag=True, help="Do not restart processes that die.")
@click.pass_context
def dev_cluster(ctx: click.Context, database_url: str | None, amqp_url: str | None,
                name: str | None, zookeeper_port: int, api_port: int, health_port: int,
                schedulers: int, apis: int, workers: int, imports: tuple[str, ...],
                directory: str | None, no_supervise: bool) -> None:
    """Start ZooKeeper (3 members), then schedulers, api processes and workers as separate
    processes; print where they listen; restart what dies; stop all on Ctrl-C/SIGTERM."""
    from jobsched.settings import ConfigError, load_settings

    root = ctx.find_root()
    try:
        settings = load_settings({"database_url": database_url, "amqp_url": amqp_url,
                                  "cluster": name},
                                 config_path=root.obj.get("config") if root.obj else None)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    folder = Path(directory or f"/tmp/jobsched-dev-{settings.cluster}")
    cluster = DevCluster(
        directory=folder, database_url=settings.database_url, amqp_url=settings.amqp_url,
        cluster=settings.cluster, zookeeper_port=zookeeper_port, api_port=api_port,
        health_port=health_port, schedulers=schedulers, apis=apis, workers=workers,
        imports=imports, die_with_parent=True,
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        click.echo(f"starting ZooKeeper on 127.0.0.1:{zookeeper_port}-{zookeeper_port + 2}, "
                   f"migrating, then {schedulers} schedulers, {apis} api, {workers} workers")
        cluster.start()
        for line in cluster.describe():
            click.echo(line)
        if settings.auth_enabled:
            click.echo(f"  token      {_dev_token(settings.database_url)}  (admin of namespace "
                       "'default', valid 24 h: Authorization: Bearer ...)")
        click.echo("ready; Ctrl-C stops everything")
        if no_supervise:
            while not stopping:
                time.sleep(0.5)
        else:
            cluster.supervise(lambda: stopping, lambda m: click.echo(f"supervisor: {m}",
                                                                     err=True))
    except ClusterError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        code = 1
    else:
        code = 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo("stopping: api, workers (drain), schedulers, ZooKeeper")
        try:
            cluster.stop()
        except ClusterError as exc:
            click.echo(f"jobsched: {exc}", err=True)
            code = 1
        click.echo("stopped")
    sys.exit(code)


def _dev_token(database_url: str) -> str:
    """An admin token for the default namespace, so the API can be used at once."""
    from datetime import timedelta

    from jobsched.token_admin import create_token

    token, _ = asyncio.run(create_token(database_url, "default", "admin",
                                        "jobsched dev cluster", timedelta(days=1)))
    return token


def register(main: click.Group) -> None:
    """Add ``jobsched dev`` to the ``jobsched`` command."""
    main.add_command(dev)
