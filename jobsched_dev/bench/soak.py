"""``jobsched bench soak``: the sustained-load run of issue 21, as a benchmark.

A deployment of its own (2 schedulers, 2 workers, 1 api by default) runs, for MINUTES:
300 every-second cron jobs over five task kinds (a sync python no-op, an async one, a
python task holding its thread ~20 ms, an http GET of a small server the benchmark serves
on 127.0.0.1, a shell ``/bin/true``) and 20 shell jobs every 5 s, none of which ever fails;
through the api, 20 ``immediate`` submits/s and 50 reads/s (a job, a job's executions, an
execution), offered on a fixed schedule whatever the answers take. Every KILL-EVERY minutes
a worker is killed (-9) and, half a period later, the leading scheduler gets SIGTERM; each
is restarted at once, as a supervisor would, under a new instance name (as the default
``hostname-pid`` would give it). ``--quiet-minutes`` adds a tail with the standbys stopped
and no kills.

Every SAMPLE-EVERY seconds it records the RSS of each role process (and PostgreSQL's and
RabbitMQ's), the rows in ``executions``, ``pg_stat_database.deadlocks`` and the leader's
``/metrics`` (tick and retention-pass histograms). When the load stops it waits for every
fire due before that moment to end, stops the roles, and reads the run back from the
database: executions by state, dead ones (none of the tasks fails, so there must be none),
duplicates, every periodic fire accounted for, immediate submit → started (database clock)
and the api latency (client clock) per window, the leader take-overs.

A role that exits unless the benchmark stopped it ends the run with its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from jobsched.adapters import postgres
from jobsched.settings import Settings
from jobsched_dev.bench.api import _create_token
from jobsched_dev.bench.cluster import BenchCluster, Services
from jobsched_dev.bench.common import Options
from jobsched_dev.bench.procstat import machine_busy, read_times, service_pids
from jobsched_dev.bench.soak_analysis import (
    LEADER_SIGTERM,
    WORKER_KILL,
    Histogram,
    JobFires,
    account_fires,
    kill_plan,
    memory_trend,
    periodic_work,
    term_trend,
    window_rows,
    windowed,
)
from jobsched_dev.bench.stats import distribution_ms
from jobsched_dev.bench.tasks import NOOP, NOOP_ASYNC, SLEEP_20MS
from jobsched_dev.processes import ProcessFailed, RoleProcess

EVERY_SECOND = "* * * * * *"
EVERY_FIVE_SECONDS = "*/5 * * * * *"
PERIODIC_KINDS = ("python-sync", "python-async", "python-sleep", "http", "shell")
FIVE_SECOND_KIND = "shell-5s"
IMMEDIATE_KIND = "immediate"

IMMEDIATE_P99_TARGET_MS = 250.0
API_P99_TARGET_MS = 100.0

TICK_METRIC = "jobsched_scheduler_tick_duration_seconds"
RETENTION_METRIC = "jobsched_scheduler_retention_seconds"

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0  # SIGTERM, then SIGKILL: a drain that takes longer is a failure
REQUEST_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 500  # past this many unanswered requests, offered ones are shed (counted)

ROUTES = ("POST /jobs", "GET /jobs/{id}", "GET /jobs/{id}/executions", "GET /executions/{id}")

# -- reading the run back (after the roles stopped) ---------------------------------------

STATES = """
SELECT state, count(*) AS n FROM executions WHERE scheduled_for < $1 GROUP BY state
"""

# Every task of the soak succeeds; any execution that did not is listed with its reason.
NOT_SUCCEEDED = """
SELECT j.name, e.state, coalesce(e.reason, e.error, '') AS why, count(*) AS n
FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.scheduled_for < $1 AND e.state IN ('dead', 'failed', 'timed_out', 'cancelled')
GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 20
"""

NOT_ENDED = """
SELECT count(*) FROM executions
WHERE scheduled_for < $1 AND state IN ('queued', 'running', 'retrying')
"""

DUPLICATE_FIRES = """
SELECT coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM executions GROUP BY job_id, scheduled_for HAVING count(*) > 1
) d
"""

# Two attempts of one execution that ran at the same time: the later one started before
# the earlier one ended (an attempt still open counts as running forever).
OVERLAPPING_ATTEMPTS = """
WITH several AS (
    SELECT execution_id FROM attempts GROUP BY execution_id HAVING count(*) > 1
)
SELECT count(*) FROM several s
JOIN attempts a ON a.execution_id = s.execution_id
JOIN attempts b ON b.execution_id = s.execution_id AND b.attempt > a.attempt
WHERE b.started_at < coalesce(a.finished_at, 'infinity')
"""

SUCCEEDED_TWICE = """
SELECT count(*) FROM (
    SELECT execution_id FROM attempts WHERE outcome = 'succeeded'
    GROUP BY execution_id HAVING count(*) > 1
) d
"""

ATTEMPT_OUTCOMES = """
SELECT coalesce(a.outcome, 'open') AS outcome, count(*) AS n
FROM attempts a JOIN executions e ON e.id = a.execution_id
WHERE e.scheduled_for < $1
GROUP BY 1
"""

# Attempts lost with a worker (lease lapsed), by the worker and how their execution ended.
LOST_ATTEMPTS = """
SELECT a.worker, e.state, count(*) AS n
FROM attempts a JOIN executions e ON e.id = a.execution_id
WHERE a.outcome = 'lost' AND e.scheduled_for < $1
GROUP BY 1, 2
"""

PERIODIC_JOBS = """
SELECT j.id, j.name, j.created_at, min(e.scheduled_for) AS first_fire,
       count(e.id) FILTER (WHERE e.scheduled_for < $2) AS fires
FROM jobs j LEFT JOIN executions e ON e.job_id = j.id
WHERE j.id = ANY($1::uuid[])
GROUP BY j.id
"""

PERIODIC_REASONS = """
SELECT job_id, reason, count(*) AS n FROM executions
WHERE job_id = ANY($1::uuid[]) AND reason IS NOT NULL AND scheduled_for < $2
GROUP BY 1, 2
"""

IMMEDIATE_RUNS = """
SELECT j.created_at, e.queued_at, e.started_at, e.state
FROM jobs j LEFT JOIN executions e ON e.job_id = j.id
WHERE j.name = $1
"""

FIRST_FIRE_BY_EPOCH = """
SELECT epoch, min(queued_at) AS first_fire FROM executions GROUP BY epoch
"""

EPOCHS_THAT_FIRED = "SELECT count(DISTINCT epoch) FROM executions"

LEADER_ROW = "SELECT epoch, holder, acquired_at FROM leader WHERE id = 1"
DB_NOW = "SELECT clock_timestamp()"
DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
# Kept by PostgreSQL's statistics as rows are inserted and deleted: free to read, unlike a
# count(*) over millions of rows every few seconds. The table is partitioned by day
# (migration 014): its rows are its partitions'.
HISTORY_ROWS = """
SELECT coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables
WHERE relid = 'executions'::regclass
   OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'executions'::regclass)
"""
AUTOVACUUM_OFF = "SELECT current_setting('autovacuum') = 'off'"
# What autovacuum would do, throttled as it would be (autovacuum_vacuum_cost_delay).
VACUUM = "VACUUM (ANALYZE) jobs, executions, attempts"
VACUUM_THROTTLE = "SET vacuum_cost_delay = '2ms'"


@dataclass(frozen=True)
class SoakPlan:
    """What the soak runs; the defaults are issue 21's soak (without its quiet tail)."""

    minutes: float = 20.0
    quiet_minutes: float = 0.0
    kill_every_min: float = 5.0  # 0: no kills
    schedulers: int = 2
    workers: int = 2
    every_second_jobs: int = 300
    five_second_jobs: int = 20
    submits_per_s: float = 20.0
    reads_per_s: float = 50.0
    sample_every_s: float = 10.0
    window_s: float = 30.0
    warmup_min: float = 2.0  # RSS slopes leave out each process's first minutes
    settle_s: float = 120.0  # how long the fires due before the end may take to end
    vacuum_every_s: float = 60.0  # VACUUM ANALYZE when the server's autovacuum is off


@dataclass
class ProcessLife:
    """One OS process of a role, from its start to its end (a restart is a new life)."""

    name: str
    instance: str
    pid: int
    started_s: float
    rss: list[tuple[float, float]] = field(default_factory=list)
    samples: int = 0
    leader_samples: int = 0
    led_from_s: float | None = None  # its first sample as leader in its latest term
    ended_s: float | None = None
    ended_by: str = "still running at the end"
    exit_code: int | None = None
    scrape: dict[str, Any] | None = None  # its last /metrics (schedulers)
    cpu_first_s: float | None = None  # its CPU seconds at its first sample of the load
    cpu_s: float = 0.0  # ... and at its last


def job_body(kind: str, name: str, schedule: str, http_url: str) -> dict[str, Any]:
    """The job a user would submit for each of the soak's kinds."""
    body: dict[str, Any] = {"name": name, "schedule": schedule}
    if kind in ("python-sync", IMMEDIATE_KIND):
        body.update(kind="python", python={"function": NOOP})
    elif kind == "python-async":
        body.update(kind="python", python={"function": NOOP_ASYNC})
    elif kind == "python-sleep":
        body.update(kind="python", python={"function": SLEEP_20MS})
    elif kind == "http":
        body.update(kind="http", http={"method": "GET", "url": http_url})
    elif kind in ("shell", FIVE_SECOND_KIND):
        body.update(kind="shell", shell={"argv": ["/bin/true"]})
    else:
        raise ValueError(f"unknown soak job kind {kind!r}")
    return body


def scheduler_metrics(text: str) -> dict[str, Any]:
    """What the soak reads from a scheduler's /metrics: whether it leads, its epoch, and
    the tick and retention-pass histograms (empty before the first observation)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"leader": False, "epoch": None, "terms": 0, "tick": Histogram(),
                           "retention": Histogram()}
    for family in text_string_to_metric_families(text):
        if family.name == "jobsched_scheduler_is_leader" and family.samples:
            out["leader"] = family.samples[0].value == 1
        elif family.name == "jobsched_scheduler_takeovers" and family.samples:
            out["terms"] = int(family.samples[0].value)
        elif family.name == "jobsched_scheduler_leader_epoch" and family.samples:
            out["epoch"] = int(family.samples[0].value)
        elif family.name in (TICK_METRIC, RETENTION_METRIC):
            buckets, count, total = [], 0.0, 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
            key = "tick" if family.name == TICK_METRIC else "retention"
            out[key] = Histogram(tuple(buckets), count, total)
    return out


@contextlib.asynccontextmanager
async def http_target() -> AsyncIterator[tuple[str, list[int]]]:
    """The server the http jobs call: 200 to every GET. Yields its URL and its hit count."""
    hits = [0]

    async def ok(request: web.Request) -> web.Response:
        hits[0] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/", hits
    finally:
        await runner.cleanup()


class ApiLoad:
    """Submits and reads offered at fixed rates (open loop: a slow answer does not slow the
    offer, so it cannot hide its own latency), each timed on the client's clock and kept
    by window."""

    def __init__(self, session: aiohttp.ClientSession, job_ids: list[str],
                 immediate: dict[str, Any], window_s: float, t0: float) -> None:
        self.session = session
        self.job_ids = job_ids
        self.immediate = immediate
        self.window_s = window_s
        self.t0 = t0
        self.submitted = 0
        self.shed = 0
        self.errors: dict[str, int] = {}
        self.latency: dict[str, dict[int, array[float]]] = {route: {} for route in ROUTES}
        self.recent_jobs: deque[str] = deque(maxlen=1000)
        self.executions: deque[str] = deque(maxlen=2000)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.rng = random.Random(21)

    async def run(self, submits_per_s: float, reads_per_s: float, until: float) -> None:
        await asyncio.gather(self._offer(submits_per_s, self._submit, until),
                             self._offer(reads_per_s, self._read, until))
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=REQUEST_TIMEOUT_S + 5)

    async def _offer(self, rate: float,
                     pick: Callable[[], tuple[str, Coroutine[Any, Any, str]]],
                     until: float) -> None:
        if rate <= 0:
            return
        interval, due = 1.0 / rate, time.monotonic()
        while (now := time.monotonic()) < until:
            while due <= now:
                if len(self.in_flight) < MAX_IN_FLIGHT:
                    route, request = pick()
                    task = asyncio.create_task(self._timed(route, request))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                else:
                    self.shed += 1
                due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _timed(self, route: str, request: Coroutine[Any, Any, str]) -> None:
        """One request, timed whatever its outcome: one that fails or times out counts in
        its route's latency too (and among the errors)."""
        began = time.monotonic()
        try:
            outcome = await request
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        elapsed = time.monotonic() - began
        if outcome != "ok":
            key = f"{route}: {outcome}"
            self.errors[key] = self.errors.get(key, 0) + 1
        window = max(0, int((began - self.t0) // self.window_s))
        self.latency[route].setdefault(window, array("d")).append(elapsed)

    def _submit(self) -> tuple[str, Coroutine[Any, Any, str]]:
        return "POST /jobs", self._post_immediate()

    async def _post_immediate(self) -> str:
        async with self.session.post("/api/v1/jobs", json=self.immediate) as response:
            body = await response.read()
            if response.status != 201:
                return str(response.status)
        self.submitted += 1
        self.recent_jobs.append(orjson.loads(body)["id"])
        return "ok"

    def _some_job(self) -> str:
        if self.recent_jobs and self.rng.random() < 0.5:
            return self.rng.choice(self.recent_jobs)
        return self.rng.choice(self.job_ids)

    def _read(self) -> tuple[str, Coroutine[Any, Any, str]]:
        """A third each: a job, a job's executions (whose ids feed the third), an
        execution."""
        pick = self.rng.random()
        if pick < 1 / 3 or (pick >= 2 / 3 and not self.executions):
            return "GET /jobs/{id}", self._get(f"/api/v1/jobs/{self._some_job()}")
        if pick < 2 / 3:
            return "GET /jobs/{id}/executions", self._get(
                f"/api/v1/jobs/{self._some_job()}/executions", harvest=True)
        return "GET /executions/{id}", self._get(
            f"/api/v1/executions/{self.rng.choice(self.executions)}")

    async def _get(self, path: str, harvest: bool = False) -> str:
        async with self.session.get(path) as response:
            body = await response.read()
            if response.status != 200:
                return str(response.status)
        if harvest:
            self.executions.extend(item["id"] for item in orjson.loads(body)["items"][:5])
        return "ok"

    def by_window(self, routes: tuple[str, ...] = ROUTES) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for route in routes:
            for window, values in self.latency[route].items():
                out.setdefault(window, []).extend(values)
        return out


class SoakRun:
    """One soak on one deployment: start it, load it, kill and restart its roles on the
    plan, sample it, and read it back."""

    def __init__(self, cluster: BenchCluster, plan: SoakPlan, pool: asyncpg.Pool,
                 http_url: str) -> None:
        self.cluster = cluster
        self.plan = plan
        self.pool = pool
        self.http_url = http_url
        self.t0 = time.monotonic()
        self.t0_db: datetime | None = None
        self.cutoff: datetime | None = None
        self.lives: list[ProcessLife] = []
        self.current: dict[str, ProcessLife] = {}
        self.stopped: set[str] = set()  # processes the benchmark is stopping or has stopped
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.vacuums: list[float] = []
        self.job_ids: dict[str, str] = {}  # id -> kind, the periodic jobs
        self.token: str | None = None
        self.load: ApiLoad | None = None
        self.settled_s: float | None = None
        self.exit_codes: dict[str, int | None] = {}
        self.deadlocks_at_start = 0
        self.pause_failures = 0
        self.cpu: dict[str, dict[str, float]] = {}
        self.own_cpu_s = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def db_now(self) -> datetime:
        return await self.pool.fetchval(DB_NOW)  # type: ignore[no-any-return]

    # -- the deployment ------------------------------------------------------------------

    def _began(self, proc: RoleProcess) -> None:
        assert proc.pid is not None
        life = ProcessLife(proc.name, proc.env.get("JOBSCHED_INSTANCE", proc.name), proc.pid,
                           self.now())
        self.lives.append(life)
        self.current[proc.name] = life

    def _ended(self, proc: RoleProcess, by: str) -> None:
        life = self.current.get(proc.name)
        if life is not None and life.ended_s is None:
            life.ended_s, life.ended_by = self.now(), by
            life.exit_code = proc.process.returncode if proc.process is not None else None

    async def deploy(self) -> None:
        """Every role started, ready, and one scheduler leading."""
        self.token = await asyncio.to_thread(_create_token, self.cluster)
        procs = [self.cluster.start("scheduler") for _ in range(self.plan.schedulers)]
        procs += [self.cluster.start("worker") for _ in range(self.plan.workers)]
        procs.append(self.cluster.start("api"))
        for proc in procs:
            self._began(proc)
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready, READY_TIMEOUT_S)
                               for p in procs))
        await self.leader(READY_TIMEOUT_S)

    async def leader(self, timeout: float) -> RoleProcess:
        """The scheduler process that reports itself leader (waiting for one)."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.cluster.processes:
                if proc.hosts("scheduler") and proc.name not in self.stopped and \
                        await asyncio.to_thread(proc.is_leader):
                    return proc
            if time.monotonic() > deadline:
                raise ProcessFailed(f"no scheduler leads after {timeout:g}s")
            await asyncio.sleep(0.1)

    def session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return aiohttp.ClientSession(self.cluster.api_url, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                     connector=aiohttp.TCPConnector(limit=128))

    async def create_jobs(self, session: aiohttp.ClientSession) -> None:
        """The periodic jobs, through the api as a user would create them."""
        bodies = [(PERIODIC_KINDS[i % len(PERIODIC_KINDS)], EVERY_SECOND)
                  for i in range(self.plan.every_second_jobs)]
        bodies += [(FIVE_SECOND_KIND, EVERY_FIVE_SECONDS)] * self.plan.five_second_jobs
        gate = asyncio.Semaphore(8)

        async def create(kind: str, schedule: str) -> None:
            body = job_body(kind, self.cluster.job_name(f"soak-{kind}"), schedule,
                            self.http_url)
            async with gate, session.post("/api/v1/jobs", json=body) as response:
                reply = await response.read()
                if response.status != 201:
                    raise RuntimeError(f"creating a {kind} job: {response.status} "
                                       f"{reply[:500]!r}")
            self.job_ids[orjson.loads(reply)["id"]] = kind

        await asyncio.gather(*(create(kind, schedule) for kind, schedule in bodies))

    # -- the run -------------------------------------------------------------------------

    async def drive(self, session: aiohttp.ClientSession) -> None:
        """The load, the kills, the samples and the watch over the roles, until the end of
        the load (and of a kill still under way)."""
        plan = self.plan
        began = time.monotonic()
        for life in self.lives:  # started before the load: negative times
            life.started_s -= began - self.t0
        self.t0 = began
        self.cluster.meter.start()
        self.own_cpu_s = -_own_cpu_s()
        self.t0_db = await self.db_now()
        self.deadlocks_at_start = int(await self.pool.fetchval(DEADLOCKS) or 0)
        end = self.t0 + (plan.minutes + plan.quiet_minutes) * 60
        immediate = job_body(IMMEDIATE_KIND, self.cluster.job_name("soak-immediate"),
                             "immediate", self.http_url)
        self.load = ApiLoad(session, list(self.job_ids), immediate, plan.window_s, self.t0)
        done = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch(done))
                group.create_task(self._sample_until(end))
                group.create_task(self._vacuum_until(end))
                group.create_task(self._kill_on_plan())
                await self.load.run(plan.submits_per_s, plan.reads_per_s, end)
                self.cutoff = await self.db_now()
                await self._pause_periodic(session)
                await self._settle()
                done.set()
        except BaseExceptionGroup as group:
            raise _first(group) from None

    async def _watch(self, done: asyncio.Event) -> None:
        """A role that exits unless the benchmark stopped it ends the run, loudly."""
        while not done.is_set():
            for proc in self.cluster.processes:
                if proc.name not in self.stopped and not proc.alive:
                    self._ended(proc, "died")
                    proc.check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)

    async def _pause_periodic(self, session: aiohttp.ClientSession) -> None:
        """The periodic jobs are paused at the cutoff, as a user would through the api:
        what is left to wait for is the backlog of fires due before it, not new ones."""
        gate = asyncio.Semaphore(16)

        async def pause(job_id: str) -> bool:
            try:
                async with gate, session.post(f"/api/v1/jobs/{job_id}/pause") as response:
                    await response.read()
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        paused = await asyncio.gather(*(pause(job_id) for job_id in self.job_ids))
        self.pause_failures = paused.count(False)

    async def _settle(self) -> None:
        """Until every fire due before the end of the load has ended (a run lost with a
        killed worker needs its lease to lapse first)."""
        began = time.monotonic()
        while time.monotonic() - began < self.plan.settle_s:
            if not await self.pool.fetchval(NOT_ENDED, self.cutoff):
                self.settled_s = time.monotonic() - began
                return
            await asyncio.sleep(2)

    async def _kill_on_plan(self) -> None:
        workers = 0
        for at, what in kill_plan(self.plan.minutes, self.plan.kill_every_min):
            await asyncio.sleep(max(0.0, at - self.now()))
            if what == WORKER_KILL:
                procs = [p for p in self.cluster.processes if p.hosts("worker")]
                await self._kill_worker(procs[workers % len(procs)])
                workers += 1
            else:
                await self._sigterm_leader()
        if self.plan.quiet_minutes > 0:
            await asyncio.sleep(max(0.0, self.plan.minutes * 60 - self.now()))
            await self._quiet_tail()

    async def _restart(self, proc: RoleProcess, event: dict[str, Any]) -> None:
        """As a supervisor would: at once, under a new instance name (the default name is
        ``hostname-pid``, new with every process). From the loop's thread: a role asked to
        die with the benchmark follows the thread that started it."""
        proc.restarts += 1
        proc.env["JOBSCHED_INSTANCE"] = f"{proc.name}-r{proc.restarts}"
        began = time.monotonic()
        proc.start()
        self._began(proc)
        await asyncio.to_thread(proc.wait_ready, READY_TIMEOUT_S)
        event["restarted_ready_s"] = time.monotonic() - began
        self.stopped.discard(proc.name)

    async def _kill_worker(self, proc: RoleProcess) -> None:
        event: dict[str, Any] = {"t_s": self.now(), "what": WORKER_KILL, "process": proc.name,
                                 "instance": self.current[proc.name].instance}
        self.events.append(event)
        self.stopped.add(proc.name)
        event["db_time"] = await self.db_now()
        await asyncio.to_thread(proc.kill)
        self._ended(proc, "kill -9")
        event["exit_code"] = self.current[proc.name].exit_code
        await self._restart(proc, event)

    async def _sigterm_leader(self) -> None:
        proc = await self.leader(30)
        old = await self.pool.fetchrow(LEADER_ROW)
        event: dict[str, Any] = {"t_s": self.now(), "what": LEADER_SIGTERM,
                                 "process": proc.name,
                                 "instance": self.current[proc.name].instance,
                                 "old_epoch": old["epoch"]}
        self.events.append(event)
        self.stopped.add(proc.name)
        event["db_time"] = await self.db_now()
        began = time.monotonic()
        event["exit_code"] = await asyncio.to_thread(proc.terminate, STOP_TIMEOUT_S)
        event["stopped_s"] = time.monotonic() - began
        self._ended(proc, "SIGTERM as leader")
        await asyncio.gather(self._restart(proc, event), self._new_epoch(old["epoch"], event))

    async def _new_epoch(self, old_epoch: int, event: dict[str, Any]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            row = await self.pool.fetchrow(LEADER_ROW)
            if row["epoch"] != old_epoch:
                event.update(new_epoch=row["epoch"], new_holder=row["holder"],
                             epoch_changed_after_s=(row["acquired_at"]
                                                    - event["db_time"]).total_seconds())
                return
            await asyncio.sleep(0.05)
        event["new_epoch"] = None

    async def _quiet_tail(self) -> None:
        """One leader left, no kills: the standbys are stopped for good."""
        leader = await self.leader(30)
        for proc in self.cluster.processes:
            if proc.hosts("scheduler") and proc is not leader:
                event = {"t_s": self.now(), "what": "standby stopped (quiet tail)",
                         "process": proc.name, "instance": self.current[proc.name].instance}
                self.events.append(event)
                self.stopped.add(proc.name)
                event["exit_code"] = await asyncio.to_thread(proc.terminate, STOP_TIMEOUT_S)
                self._ended(proc, "SIGTERM for the quiet tail")

    async def _vacuum_until(self, end: float) -> None:
        """Where the server's autovacuum is off (this project's CI machines), what it would
        do: without it the tables' statistics and dead rows would make any query slower
        with every minute, which is the server's configuration, not the scheduler."""
        if self.plan.vacuum_every_s <= 0 or not await self.pool.fetchval(AUTOVACUUM_OFF):
            return
        while time.monotonic() + self.plan.vacuum_every_s < end:
            await asyncio.sleep(self.plan.vacuum_every_s)
            async with self.pool.acquire() as conn:
                began = time.monotonic()
                await conn.execute(VACUUM_THROTTLE)
                await conn.execute(VACUUM)
                await conn.execute("RESET vacuum_cost_delay")
                self.vacuums.append(time.monotonic() - began)

    async def _sample_until(self, end: float) -> None:
        machine = machine_busy()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                machine = await self._sample(http, machine)
                if time.monotonic() >= end:
                    self.cluster.meter.stop()
                    self.own_cpu_s += _own_cpu_s()
                    self.cpu = self.cluster.meter.report()
                    return
                await asyncio.sleep(min(self.plan.sample_every_s,
                                        max(0.0, end - time.monotonic())))

    async def _sample(self, http: aiohttp.ClientSession,
                      machine: tuple[float, float]) -> tuple[float, float]:
        t = self.now()
        sample: dict[str, Any] = {"t": t, "rss_mb": {}}
        for proc in self.cluster.processes:
            life = self.current.get(proc.name)
            if life is None or not proc.alive or life.pid != proc.pid:
                continue
            times = read_times(life.pid)
            if times is not None:
                life.rss.append((t, times.rss_mb))
                sample["rss_mb"][life.instance] = times.rss_mb
                if life.cpu_first_s is None:
                    # A life that began before the load counts from here; one that began
                    # during it counts whole (its start-up is load-time work).
                    life.cpu_first_s = times.cpu_s if life.started_s < 0 else 0.0
                life.cpu_s = times.cpu_s
        services = await asyncio.to_thread(service_pids)
        sample["services_rss_mb"] = {
            name: sum(times.rss_mb for pid in pids if (times := read_times(pid)))
            for name, pids in services.items() if name in ("postgresql", "rabbitmq")}
        sample["history"] = int(await self.pool.fetchval(HISTORY_ROWS) or 0)
        sample["deadlocks"] = int(await self.pool.fetchval(DEADLOCKS) or 0) \
            - self.deadlocks_at_start
        now_machine = machine_busy()
        total = now_machine[1] - machine[1]
        sample["machine_busy"] = (now_machine[0] - machine[0]) / total if total > 0 else None
        sample["leader"] = None
        sample["tick"] = sample["retention"] = None
        for proc in self.cluster.processes:
            life = self.current.get(proc.name)
            if not proc.hosts("scheduler") or life is None or proc.name in self.stopped:
                continue
            try:
                async with http.get(f"{proc.url}/metrics") as response:
                    scrape = scheduler_metrics(await response.text())
            except (aiohttp.ClientError, TimeoutError):
                continue
            previous, life.scrape = life.scrape, scrape
            life.samples += 1
            if scrape["leader"]:
                life.leader_samples += 1
                if previous is None or not previous["leader"]:
                    life.led_from_s = t  # a take-over: its latest term begins
                sample["leader"] = life.instance
                if previous is not None and previous["leader"]:
                    sample["tick"] = scrape["tick"].minus(previous["tick"])
                    sample["retention"] = scrape["retention"].minus(previous["retention"])
        self.samples.append(sample)
        return now_machine

    # -- reading it back -----------------------------------------------------------------

    async def stop(self) -> None:
        """One SIGTERM to every role (they drain in parallel), as a supervisor sends it;
        their exit codes. (BenchCluster.stop_all signals twice: a role already past its
        drain, its handlers gone, then dies of the second one.)"""
        for proc in self.cluster.processes:
            self.stopped.add(proc.name)
            proc.signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.to_thread(_wait_exit, proc)
                               for proc in self.cluster.processes))
        for proc in self.cluster.processes:
            if proc.name in self.current and self.current[proc.name].ended_s is None:
                self._ended(proc, "SIGTERM at the end")
                self.exit_codes[self.current[proc.name].instance] = \
                    self.current[proc.name].exit_code

    async def analyse(self, http_hits: int) -> dict[str, Any]:
        assert self.cutoff is not None and self.t0_db is not None and self.load is not None
        plan, cutoff, conn = self.plan, self.cutoff, self.pool
        states = {r["state"]: r["n"] for r in await conn.fetch(STATES, cutoff)}
        not_succeeded = [dict(r) for r in await conn.fetch(NOT_SUCCEEDED, cutoff)]
        lost = [dict(r) for r in await conn.fetch(LOST_ATTEMPTS, cutoff)]
        executions = {
            "by_state": states, "total": sum(states.values()),
            "not_ended": int(await conn.fetchval(NOT_ENDED, cutoff)),
            "dead": states.get("dead", 0),
            "not_succeeded": not_succeeded,
            "attempts_by_outcome": {r["outcome"]: r["n"]
                                    for r in await conn.fetch(ATTEMPT_OUTCOMES, cutoff)},
            "lost_attempts": lost,
            "history_rows_at_end": int(await conn.fetchval("SELECT count(*) FROM executions")),
            "http_target_hits": http_hits,
        }
        duplicates = {
            "executions_of_one_fire": int(await conn.fetchval(DUPLICATE_FIRES)),
            "overlapping_attempts": int(await conn.fetchval(OVERLAPPING_ATTEMPTS)),
            "executions_succeeded_twice": int(await conn.fetchval(SUCCEEDED_TWICE)),
        }
        fires = await self._fires()
        deadlocks = int(await conn.fetchval(DEADLOCKS) or 0) - self.deadlocks_at_start
        immediate = await self._immediate()
        leadership = {
            # Each scheduler process counts the terms it began; a term that ended in a
            # ZooKeeper session lapse or an eviction by the next leader counts too.
            "terms_begun": sum(life.scrape["terms"] for life in self.lives
                               if life.scrape is not None),
            "terms_that_fired": int(await conn.fetchval(EPOCHS_THAT_FIRED)),
            "sigterms": sum(1 for e in self.events if e["what"] == LEADER_SIGTERM),
        }
        api = self._api()
        takeovers = await self._takeovers()
        memory = self._memory()
        periodic = periodic_work(self.samples[1:])
        periodic["vacuums"] = {"count": len(self.vacuums), "total_s": sum(self.vacuums)}
        invariants = {
            "dead executions (tasks never fail)": executions["dead"],
            "executions not succeeded": sum(r["n"] for r in not_succeeded),
            "executions of one fire": duplicates["executions_of_one_fire"],
            "overlapping attempts": duplicates["overlapping_attempts"],
            "fires missing, unexplained": fires["unexplained"],
            "immediate jobs never fired": immediate["never_fired"],
            "executions not ended": executions["not_ended"],
            "take-overs that did not happen": sum(1 for e in takeovers
                                                  if e.get("new_epoch") is None),
            # SIGTERM drains: a role that then exits non-zero (or is killed after the
            # drain timeout) did not stop as it should.
            "roles that did not stop cleanly": sum(1 for c in self.exit_codes.values()
                                                   if c != 0)
            + sum(1 for e in self.events if e["what"] != WORKER_KILL
                  and e.get("exit_code") != 0),
        }
        return {
            "scenario": "soak", "plan": asdict(plan),
            "deployment": {"cluster": self.cluster.name, "database": self.cluster.database,
                           "log_dir": str(self.cluster.log_dir),
                           "settings": dict(self.cluster.settings)},
            "load": {"started_at": self.t0_db.isoformat(), "cutoff": cutoff.isoformat(),
                     "seconds": (cutoff - self.t0_db).total_seconds(),
                     "settled_after_s": self.settled_s,
                     "periodic_jobs": len(self.job_ids),
                     "immediate_submitted": self.load.submitted, "shed": self.load.shed,
                     "periodic_jobs_not_paused": self.pause_failures},
            "events": [{k: (v.isoformat() if isinstance(v, datetime) else v)
                        for k, v in e.items()} for e in self.events],
            "executions": executions, "duplicates": duplicates, "fires": fires,
            "deadlocks": deadlocks, "memory": memory, "immediate": immediate, "api": api,
            "takeovers": takeovers, "leadership": leadership,
            "periodic_work": _jsonable(periodic), "cpu": self._cpu(),
            "exit_codes": self.exit_codes,
            "invariants": invariants,
            "invariants_hold": not any(invariants.values()),
            "samples": [_jsonable(s) for s in self.samples],
        }

    async def _fires(self) -> dict[str, Any]:
        ids = list(self.job_ids)
        reasons: dict[str, dict[str, int]] = {}
        for row in await self.pool.fetch(PERIODIC_REASONS, ids, self.cutoff):
            reasons.setdefault(str(row["job_id"]), {})[row["reason"]] = row["n"]
        jobs = [JobFires(self.job_ids[str(r["id"])],
                         5 if self.job_ids[str(r["id"])] == FIVE_SECOND_KIND else 1,
                         r["created_at"], r["first_fire"], r["fires"],
                         reasons.get(str(r["id"]), {}))
                for r in await self.pool.fetch(PERIODIC_JOBS, ids, self.cutoff)]
        assert self.cutoff is not None
        return account_fires(jobs, self.cutoff)

    async def _immediate(self) -> dict[str, Any]:
        assert self.t0_db is not None
        rows = await self.pool.fetch(IMMEDIATE_RUNS, self.cluster.job_name("soak-immediate"))
        started = [(r["created_at"], r["started_at"] - r["created_at"], r)
                   for r in rows if r["started_at"] is not None]
        by_window = windowed((((c - self.t0_db).total_seconds(), d.total_seconds())
                              for c, d, _ in started), self.plan.window_s)
        overall = distribution_ms(d.total_seconds() for _, d, _ in started)
        return {
            "jobs": len(rows), "started": len(started),
            "not_started": len(rows) - len(started),
            "never_fired": sum(1 for r in rows if r["queued_at"] is None),
            "submitted -> started": overall,
            "submitted -> queued": distribution_ms(
                (r["queued_at"] - r["created_at"]).total_seconds()
                for r in rows if r["queued_at"] is not None),
            "queued -> started": distribution_ms(
                (r["started_at"] - r["queued_at"]).total_seconds() for _, _, r in started),
            "target_p99_ms": IMMEDIATE_P99_TARGET_MS,
            "within_target": overall["p99"] <= IMMEDIATE_P99_TARGET_MS,
            "windows": window_rows(by_window, self.plan.window_s, self._event_times()),
        }

    def _event_times(self) -> list[tuple[float, str]]:
        return [(e["t_s"], f"{e['what']} {e['process']}") for e in self.events]

    def _api(self) -> dict[str, Any]:
        load = self.load
        assert load is not None
        every = load.by_window()
        overall = distribution_ms(v for values in every.values() for v in values)
        rows = window_rows(every, self.plan.window_s, self._event_times())
        per_route = {route: load.by_window((route,)) for route in ROUTES}
        for row in rows:
            index = int(row["from_s"] // self.plan.window_s)
            row["p99_by_route"] = {
                route: distribution_ms(per_route[route].get(index, []))["p99"]
                for route in ROUTES}
        return {
            "requests": overall["n"], "errors": load.errors, "shed": load.shed,
            "overall": overall,
            "by_route": {route: distribution_ms(v for values in per_route[route].values()
                                                for v in values) for route in ROUTES},
            "target_p99_ms": API_P99_TARGET_MS,
            "within_target": overall["p99"] <= API_P99_TARGET_MS,
            "windows": rows,
        }

    async def _takeovers(self) -> list[dict[str, Any]]:
        first_fire = {r["epoch"]: r["first_fire"]
                      for r in await self.pool.fetch(FIRST_FIRE_BY_EPOCH)}
        out = []
        for event in self.events:
            if event["what"] != LEADER_SIGTERM:
                continue
            row = {k: event.get(k) for k in ("t_s", "process", "instance", "old_epoch",
                                             "new_epoch", "new_holder", "exit_code",
                                             "stopped_s", "epoch_changed_after_s",
                                             "restarted_ready_s")}
            # The first fire of any later term: the next leader may itself lose its term
            # before it fires (a starved machine).
            later = [at for epoch, at in first_fire.items() if epoch > event["old_epoch"]]
            row["first_fire_after_s"] = (min(later) - event["db_time"]).total_seconds() \
                if later else None
            out.append(row)
        return out

    def _cpu(self) -> dict[str, float]:
        """Shares of the machine's CPU over the load (1.0 = every core busy): what the
        soak's roles, the servers (which serve the whole machine) and the benchmark took,
        and everything else that ran meanwhile, which makes a run noisy."""
        machine = self.cpu.get("machine (all processes)")
        if machine is None or not machine["core_share"]:
            return {}
        wall_s = machine["cpu_s"] / machine["core_share"]
        roles = sum(max(0.0, life.cpu_s - life.cpu_first_s) for life in self.lives
                    if life.cpu_first_s is not None)
        out = {"machine_busy": machine["busy_fraction"], "roles": roles / wall_s / _ncpu()}
        for name in ("postgresql", "rabbitmq", "zookeeper"):
            if name in self.cpu:
                out[name] = self.cpu[name]["core_share"] / _ncpu()
        # The benchmark's own process: CpuMeter's figure would add the roles it has reaped
        # (killed and stopped ones), counted above already.
        out["bench client"] = self.own_cpu_s / wall_s / _ncpu()
        out["everything else"] = max(0.0, out["machine_busy"] - sum(
            v for k, v in out.items() if k != "machine_busy"))
        return out

    def _memory(self) -> list[dict[str, Any]]:
        out = []
        for life in self.lives:
            trend = memory_trend(life.rss, self.plan.warmup_min * 60)
            out.append({"process": life.name, "instance": life.instance, "pid": life.pid,
                        "from_s": life.started_s, "to_s": life.ended_s,
                        "ended_by": life.ended_by, "exit_code": life.exit_code,
                        "leader_share": (life.leader_samples / life.samples
                                         if life.samples else None),
                        **trend})
            if life.led_from_s is not None and life.rss and life.led_from_s > life.rss[0][0]:
                # Took over during its life: the same process over its latest term alone.
                out.append({"process": life.name, "instance": f"{life.instance} as leader",
                            "pid": life.pid, "from_s": life.led_from_s, "to_s": life.ended_s,
                            "ended_by": life.ended_by, "exit_code": life.exit_code,
                            "leader_share": None,
                            **term_trend(life.rss, life.led_from_s,
                                         self.plan.warmup_min * 60)})
        for service in ("postgresql", "rabbitmq"):
            points = [(s["t"], s["services_rss_mb"][service]) for s in self.samples
                      if s["services_rss_mb"].get(service)]
            if points:
                # Every process of the server, shared memory counted in each, and the
                # server serves whatever else runs on the machine.
                out.append({"process": service, "instance": f"{service} (whole server)",
                            "pid": None, "from_s": points[0][0],
                            "to_s": points[-1][0], "ended_by": "", "exit_code": None,
                            "leader_share": None,
                            **memory_trend(points, self.plan.warmup_min * 60)})
        return out


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _ncpu() -> int:
    return os.cpu_count() or 1


def _wait_exit(proc: RoleProcess) -> None:
    """Until the process exits; SIGKILL once STOP_TIMEOUT_S has passed."""
    if proc.process is None:
        return
    try:
        proc.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first real error of a task group (a role's death, say), not the group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _jsonable(value: Any) -> Any:
    if isinstance(value, Histogram):
        return {"count": value.count, "sum_s": value.total}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


async def run_soak(services: Services, plan: SoakPlan, options: Options) -> dict[str, Any]:
    """The soak on a deployment of its own; SIGTERM to the benchmark ends it early, with
    everything it started stopped and dropped."""
    cluster = BenchCluster(services, log_level=options.log_level, keep=options.keep,
                           settings=dict(options.settings), die_with_parent=True)
    fields = Settings.model_fields
    # Loopback is where the http jobs' server is; refused by default once egress rules
    # exist (JOBSCHED_HTTP_ALLOW_CIDRS); unknown variables are ignored before that.
    cluster.settings.setdefault("JOBSCHED_HTTP_ALLOW_CIDRS", "127.0.0.0/8")
    if "rate_limit_per_s" in fields:
        # The per-token limit guards a shared deployment; one token carries all the load here.
        cluster.settings.setdefault("JOBSCHED_RATE_LIMIT_PER_S", "0")
    if "max_active_jobs" in fields:
        cluster.settings.setdefault("JOBSCHED_MAX_ACTIVE_JOBS", "0")
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        async with cluster, http_target() as (http_url, hits):
            pool = await postgres.create_pool(cluster.database_url, min_size=1, max_size=4)
            try:
                run = SoakRun(cluster, plan, pool, http_url)
                await run.deploy()
                async with run.session() as session:
                    await run.create_jobs(session)
                    await run.drive(session)
                await run.stop()
                return await run.analyse(hits[0])
            finally:
                await pool.close()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
