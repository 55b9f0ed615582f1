"""The chaos suite's tools: a private PostgreSQL, the machine's RabbitMQ app switch, a
submitter that keeps posting through every api process, and the invariants, computed from
the executions table (counted per (job, scheduled_for)) and from the tasks' run log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from jobsched.client import TERMINAL_STATES
from jobsched_dev.api_client import ApiClient

PG_BIN = Path(os.environ.get("JOBSCHED_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
COALESCED = re.compile(r"coalesced (\d+) later missed fires")


# --- a private PostgreSQL ----------------------------------------------------------------


class PrivatePostgres:
    """``initdb`` into a temporary folder, served on its own port: the suite stops and
    restarts this one, never the machine's server."""

    def __init__(self, port: int, options: str = "") -> None:
        self.port = port
        self.options = options  # extra server options, for this server only
        self.directory = Path(tempfile.mkdtemp(prefix="jobsched-chaos-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"

    def _as_owner(self, *args: str, timeout: float = 60) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses root: run as the postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, timeout=timeout, capture_output=True)

    def init(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_owner("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                       "--no-sync", "-E", "UTF8")
        return self

    def base_backup(self, primary: PrivatePostgres) -> PrivatePostgres:
        """Make this server a streaming standby of ``primary`` (``pg_basebackup -R``)."""
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_owner("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
                       "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream",
                       "--checkpoint=fast", "--no-sync")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections=400 -c shared_buffers=64MB {self.options}")
        self._as_owner("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                       "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def kill(self) -> None:
        """``kill -9`` the postmaster (its backends notice and exit)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def promote(self) -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if self.is_running():
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


# --- the machine's RabbitMQ --------------------------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 90) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=timeout,
                   capture_output=True)


def rabbitmq_controllable() -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        rabbitmqctl("status", timeout=20)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def rabbitmq_app_running() -> bool:
    """Whether the RabbitMQ application is up (stop_app leaves the node itself running)."""
    try:
        rabbitmqctl("await_startup", "--timeout", "1", timeout=15)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def start_rabbitmq_app() -> None:
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup", "--timeout", "60")


# --- the API, from the outside ------------------------------------------------------------


class Submitter:
    """Submits immediate jobs through the apis in turn, all the time, and keeps every
    answer: what was acknowledged (201) and what else came back."""

    def __init__(self, api: ApiClient, every_s: float = 0.1) -> None:
        self.api = api
        self.every_s = every_s
        self.acknowledged: list[str] = []
        self.answers: list[tuple[float, int, str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while True:
            n += 1
            url = self.api.urls[n % len(self.api.urls)]
            try:
                status, body, kind = await self.api.request(
                    "POST", "/api/v1/jobs", url=url,
                    json=immediate(f"submitted-{n}", "chaos_tasks:tick"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers.append((time.time(), 0, "", repr(exc)))
            else:
                self.answers.append((time.time(), status, kind, body))
                if status == 201:
                    self.acknowledged.append(body["id"])
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task



def cron_every_second(name: str, function: str = "chaos_tasks:tick",
                      **args: Any) -> dict[str, Any]:
    return {"name": name, "schedule": "* * * * * *", "kind": "python",
            "python": {"function": function, "args": args}}


def immediate(name: str, function: str, max_attempts: int = 3, **args: Any) -> dict[str, Any]:
    return {"name": name, "schedule": "immediate", "kind": "python",
            "python": {"function": function, "args": args},
            "retry": {"max_attempts": max_attempts, "backoff_s": 0.1, "max_backoff_s": 0.1},
            "timeout_s": 120}


# --- what the database says ---------------------------------------------------------------


@dataclass(frozen=True)
class Fire:
    id: str
    job_id: str
    scheduled_for: datetime
    state: str
    reason: str | None
    epoch: int
    attempt: int
    worker: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


async def fetch_fires(database_url: str, job_ids: Iterable[str]) -> list[Fire]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT id::text, job_id::text, scheduled_for, state, reason, epoch, attempt, "
            "worker, queued_at, started_at, finished_at FROM executions "
            "WHERE job_id = ANY($1::uuid[]) ORDER BY scheduled_for",
            list(job_ids), timeout=10)
    finally:
        await conn.close()
    return [Fire(**dict(r)) for r in rows]


async def fetch_attempts(database_url: str, execution_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT * FROM attempts WHERE execution_id = $1 "
                                "ORDER BY attempt", execution_id, timeout=10)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def stop_jobs(database_url: str, job_ids: Iterable[str]) -> None:
    """End a test's recurring jobs straight in the database (works whatever the api does)."""
    ids = list(job_ids)
    if not ids:
        return
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute("UPDATE jobs SET state = 'cancelled', next_fire_at = NULL "
                           "WHERE id = ANY($1::uuid[]) AND state IN ('active', 'paused')",
                           ids, timeout=10)
    finally:
        await conn.close()


async def wait_terminal(database_url: str, job_ids: Sequence[str],
                        timeout: float = 60) -> list[Fire]:
    """Every execution of these jobs terminal (raises with the stragglers otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        fires = await fetch_fires(database_url, job_ids)
        open_ = [f for f in fires if f.state not in TERMINAL_STATES]
        if not open_:
            return fires
        if time.monotonic() > deadline:
            shown = Counter(f.state for f in open_)
            raise AssertionError(f"{len(open_)} executions not terminal after {timeout:g}s: "
                                 f"{dict(shown)}; e.g. {open_[:3]}")
        await asyncio.sleep(0.25)


# --- the invariants -----------------------------------------------------------------------


def assert_one_execution_per_fire(fires: Sequence[Fire]) -> None:
    """Guarantee 1: exactly one execution row per (job, scheduled_for)."""
    per_fire = Counter((f.job_id, f.scheduled_for) for f in fires)
    doubled = [key for key, n in per_fire.items() if n > 1]
    assert not doubled, f"{len(doubled)} fires with more than one execution: {doubled[:5]}"


def assert_no_missed_fire(fires: Sequence[Fire], period: timedelta = timedelta(seconds=1)
                          ) -> int:
    """Guarantee 3 for a job firing every ``period`` with misfire=run_once: every hole in a
    job's series of fire times is exactly the fires its previous execution says it
    coalesced. Returns how many fires were coalesced in all."""
    by_job: dict[str, list[Fire]] = defaultdict(list)
    for fire in fires:
        by_job[fire.job_id].append(fire)
    coalesced_total = 0
    for job, series in by_job.items():
        series.sort(key=lambda f: f.scheduled_for)
        for before, after in itertools.pairwise(series):
            skipped = round((after.scheduled_for - before.scheduled_for) / period) - 1
            match = COALESCED.search(before.reason or "")
            coalesced = int(match.group(1)) if match else 0
            assert skipped == coalesced, (
                f"job {job}: {skipped} fires between {before.scheduled_for:%H:%M:%S} and "
                f"{after.scheduled_for:%H:%M:%S} but the execution says "
                f"{before.reason!r}: fires lost")
            coalesced_total += coalesced
    return coalesced_total


def assert_all_terminal(fires: Sequence[Fire], allowed: set[str] | None = None) -> None:
    states = Counter(f.state for f in fires)
    assert set(states) <= (allowed or TERMINAL_STATES), dict(states)


# --- what the tasks say they did -----------------------------------------------------------


@dataclass
class RunLog:
    """Lines the chaos tasks append: one ``start`` and one ``end`` or ``stopped`` per run."""

    path: Path
    _offset: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)

    def mark(self) -> None:
        """Forget what is logged so far: a test reads only its own runs."""
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self, job_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            lines = handle.read().splitlines()
        wanted = set(job_ids) if job_ids is not None else None
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if wanted is None or e["job_id"] in wanted]


def assert_ran_once_per_fire(entries: Sequence[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """No fire ran to completion twice, and no execution ran on two workers at once."""
    completed = Counter((e["job_id"], e["scheduled_for"]) for e in entries
                        if e["event"] == "end")
    twice = {k: n for k, n in completed.items() if n > 1}
    assert not twice, f"fires that ran to completion more than once: {list(twice)[:5]}"
    runs: dict[tuple[str, int], dict[str, float]] = {}
    for entry in entries:
        run = runs.setdefault((entry["execution_id"], entry["attempt"]), {})
        run[entry["event"]] = entry["t"]
    by_execution: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (execution, _), run in runs.items():
        if "start" in run and ("end" in run or "stopped" in run):
            by_execution[execution].append((run["start"], run.get("end", run.get("stopped",
                                                                                 0.0))))
    for execution, spans in by_execution.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"execution {execution} ran twice at the same time: {spans}"
    return completed


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"n": len(ordered), "min": round(ordered[0], 2),
            "median": round(ordered[len(ordered) // 2], 2), "max": round(ordered[-1], 2)}


def record(name: str, **numbers: Any) -> None:
    """Append a measurement to $CHAOS_RESULTS (JSON lines) for docs/reliability.md."""
    target = os.environ.get("CHAOS_RESULTS")
    line = json.dumps({"scenario": name, "at": time.time(), **numbers}, default=str)
    print(f"chaos {line}")
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")
