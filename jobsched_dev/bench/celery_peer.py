"""``--vs celery``: the burn-down and the herd run by Celery 5 on the same RabbitMQ, in the
same run.

burn-down: a Celery worker (prefork, ``acks_late``, concurrency = cores) is started and
ready; then N no-op tasks are published from this process and the clock runs until all have
run: with the PostgreSQL result backend, until N result rows exist in its table; without
one, until the queue is empty (at most the worker's prefetch, a few tasks, is then still
running).

herd: the same worker, and one ``celery beat`` process with N entries on ``crontab()``
(every minute), started after one minute boundary and measured at the next: each run of
the task appends its start time (``time.time()``) to a file; lateness is that minus the
boundary. Beat and the worker are stopped once all N started, or 30 s past the boundary.

Celery is an optional extra (``pip install '.[bench]'``). Each run has a queue of its own
(``jobsched-bench-celery-<run>``), deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from jobsched.adapters import postgres
from jobsched_dev.bench.cluster import Services, drop_database
from jobsched_dev.bench.common import summary_of_cpu
from jobsched_dev.bench.procstat import CpuMeter
from jobsched_dev.bench.stats import distribution_ms
from jobsched_dev.processes import source_env

RESULT_TABLE = "celery_taskmeta"
BEAT_LEAD_S = 15.0  # beat starts at least this long before the boundary it is measured at


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


async def _queue_depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Ready messages, from a fresh passive declare (a channel caches the count)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        if not channel.is_closed:
            await channel.close()


def _publish(count: int) -> float:
    from jobsched_dev.bench.celery_app import noop

    began = time.perf_counter()
    for _ in range(count):
        noop.apply_async()
    return time.perf_counter() - began


async def run_celery_burn_down(services: Services, jobs: int, with_results: bool,
                               concurrency: int | None = None,
                               timeout: float = 600) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    queue = _queue_name(run)
    database = f"jobsched_bench_celery_{run}"
    database_url = services.database_url(database)
    backend = ("db+" + database_url.replace("postgresql://", "postgresql+psycopg2://", 1)
               if with_results else "")
    env = _celery_env(services, queue, CELERY_BENCH_BACKEND=backend)
    os.environ.update({k: env[k] for k in ("CELERY_BENCH_BROKER", "CELERY_BENCH_BACKEND",
                                           "CELERY_BENCH_QUEUE")})
    sys.modules.pop("jobsched_dev.bench.celery_app", None)  # re-read the environment
    if with_results:
        await postgres.create_database(database_url)
    concurrency = concurrency or os.cpu_count() or 2
    log_path = Path(tempfile.mkdtemp(prefix="jobsched-bench-celery-")) / "worker.log"
    worker = await asyncio.to_thread(_start_worker, env, concurrency, queue, log_path)
    meter = CpuMeter()
    connection = await aio_pika.connect(services.amqp_url, timeout=10)
    try:
        await _wait_worker_ready(worker, connection, queue, concurrency, log_path)
        if with_results:
            await asyncio.to_thread(_warm_backend)
        _meter_worker(meter, worker)
        meter.start()
        began = time.perf_counter()
        publishing = asyncio.create_task(asyncio.to_thread(_publish, jobs))
        done = await _wait_done(connection, queue, database_url if with_results else None,
                                jobs, publishing, timeout)
        elapsed = time.perf_counter() - began
        meter.stop()
        publish_s = await publishing
    finally:
        await connection.close()
        await asyncio.to_thread(_stop, worker)
        await _cleanup(services, queue, database if with_results else None)
    from celery import __version__ as celery_version

    return {"peer": "celery", "version": celery_version,
            "result_backend": "postgresql" if with_results else None,
            "jobs": jobs, "concurrency": concurrency, "drained": done,
            "drain_s": elapsed, "publish_s": publish_s,
            "executions_per_s": jobs / elapsed if elapsed > 0 else float("nan"),
            "cpu": summary_of_cpu(meter.report())}


async def run_celery_herd(services: Services, entries: int, concurrency: int | None = None,
                          timeout: float = 30) -> dict[str, Any]:
    """ENTRIES beat entries due at one minute boundary, run by a prefork worker; lateness of
    each entry's start from that boundary. Gives up ``timeout`` s past the boundary."""
    directory = Path(tempfile.mkdtemp(prefix="jobsched-bench-celery-herd-"))
    queue = _queue_name(uuid.uuid4().hex[:8])
    stamps_path = directory / "started.log"
    env = _celery_env(services, queue, CELERY_BENCH_BACKEND="",
                      CELERY_BENCH_BEAT_ENTRIES=str(entries),
                      CELERY_BENCH_STAMPS=str(stamps_path))
    concurrency = concurrency or os.cpu_count() or 2
    logs = {"worker": directory / "worker.log", "beat": directory / "beat.log"}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    meter = CpuMeter()
    connection = await aio_pika.connect(services.amqp_url, timeout=10)
    try:
        processes["worker"] = await asyncio.to_thread(_start_worker, env, concurrency, queue,
                                                      logs["worker"])
        await _wait_worker_ready(processes["worker"], connection, queue, concurrency,
                                 logs["worker"])
        if _next_minute(time.time()) - time.time() < BEAT_LEAD_S:
            await _sleep_watching(_next_minute(time.time()) + 0.1, processes, logs)
        processes["beat"] = await asyncio.to_thread(_start_beat, env, directory)
        boundary = _next_minute(time.time())
        meter.add("celery beat", processes["beat"].pid)
        _meter_worker(meter, processes["worker"])
        await _sleep_watching(boundary, processes, logs)
        meter.start()
        stamps = await _wait_stamps(stamps_path, entries, boundary + timeout, processes, logs)
        meter.stop()
    finally:
        await connection.close()
        for process in reversed(processes.values()):
            await asyncio.to_thread(_stop, process)
        await _cleanup(services, queue, None)
        shutil.rmtree(directory, ignore_errors=True)
    from celery import __version__ as celery_version

    first: dict[str, float] = {}
    for at, entry in stamps:
        first[entry] = min(at, first.get(entry, at))
    late = [at - boundary for at in first.values()]
    return {"peer": "celery beat", "version": celery_version, "entries": entries,
            "concurrency": concurrency,
            "due": datetime.fromtimestamp(boundary, UTC).isoformat(),
            "started": len(first), "missed": entries - len(first),
            "duplicates": len(stamps) - len(first),
            "all_started_after_s": max(late) if len(first) == entries else None,
            "latency_ms": {"due -> started": distribution_ms(late)},
            "cpu": summary_of_cpu(meter.report())}


def _next_minute(after: float) -> float:
    """The first whole minute (epoch seconds) after ``after``."""
    return (int(after) // 60 + 1) * 60.0


def _check_alive(processes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            raise RuntimeError(f"celery {name} exited with {process.returncode}:\n"
                               + _log_tail(logs[name]))


async def _sleep_watching(until: float, processes: dict[str, subprocess.Popen[bytes]],
                          logs: dict[str, Path]) -> None:
    """Sleep until the epoch time ``until``, failing as soon as a process has exited."""
    while (left := until - time.time()) > 0:
        _check_alive(processes, logs)
        await asyncio.sleep(min(left, 0.5))


def _read_stamps(path: Path) -> list[tuple[float, str]]:
    """The (start time, entry) lines the task appended; a line still being written is
    left for the next read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    stamps = []
    for line in text.split("\n")[:-1]:
        at, _, entry = line.partition(" ")
        stamps.append((float(at), entry))
    return stamps


async def _wait_stamps(path: Path, entries: int, deadline: float,
                       processes: dict[str, subprocess.Popen[bytes]],
                       logs: dict[str, Path]) -> list[tuple[float, str]]:
    """Until every entry has started once, or the epoch time ``deadline``."""
    while True:
        stamps = _read_stamps(path)
        if len({entry for _, entry in stamps}) >= entries or time.time() > deadline:
            return stamps
        _check_alive(processes, logs)
        await asyncio.sleep(0.05)


def _queue_name(run: str) -> str:
    return f"jobsched-bench-celery-{run}"


def _celery_env(services: Services, queue: str, **extra: str) -> dict[str, str]:
    """The environment ``jobsched_dev.bench.celery_app`` is configured from (see there)."""
    broker = services.amqp_url.rstrip("/") + "//" if services.amqp_url.endswith(":5672/") \
        else services.amqp_url
    return source_env({**os.environ, "CELERY_BENCH_BROKER": broker,
                       "CELERY_BENCH_QUEUE": queue, **extra})


def _start_celery(arguments: list[str], env: dict[str, str],
                  log_path: Path) -> subprocess.Popen[bytes]:
    """``celery -A jobsched_dev.bench.celery_app ARGUMENTS``, its output to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "jobsched_dev.bench.celery_app", *arguments],
            env=env, stdout=log, stderr=subprocess.STDOUT)


def _start_worker(env: dict[str, str], concurrency: int, queue: str,
                  log_path: Path) -> subprocess.Popen[bytes]:
    return _start_celery(
        ["worker", "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel",
         "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queue,
         # a node name of its own: two workers named celery@<host> (a run's and one still
         # stopping, or another run's) share the control queue and the second one fails
         # ("... declared on another connection or the exclusive property ...")
         "--hostname", f"{queue}@%h"],
        env, log_path)


def _start_beat(env: dict[str, str], directory: Path) -> subprocess.Popen[bytes]:
    """One ``celery beat`` with its schedule database in ``directory``."""
    return _start_celery(["beat", "--loglevel", "WARNING",
                          "--schedule", str(directory / "beat-schedule")],
                         env, directory / "beat.log")


def _log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


async def _wait_worker_ready(worker: subprocess.Popen[bytes],
                             connection: aio_pika.abc.AbstractConnection, queue: str,
                             concurrency: int, log_path: Path) -> None:
    """Until all prefork children exist and the worker has declared its queue."""
    deadline = time.monotonic() + 30
    while len(_children(worker.pid)) < concurrency or not await _queue_exists(
            connection, queue):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("celery worker did not start:\n" + _log_tail(log_path))
        await asyncio.sleep(0.1)


def _meter_worker(meter: CpuMeter, worker: subprocess.Popen[bytes]) -> None:
    meter.add("celery worker", worker.pid)
    for n, child in enumerate(_children(worker.pid)):
        meter.add(f"celery child {n + 1}", child)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _warm_backend() -> None:
    """One task through the backend, so its table exists before the clock starts."""
    from jobsched_dev.bench.celery_app import noop

    noop.apply_async().get(timeout=30)


async def _queue_exists(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    try:
        await _queue_depth(connection, queue)
    except aio_pika.exceptions.ChannelClosed:
        return False
    return True


async def _wait_done(connection: aio_pika.abc.AbstractConnection, queue: str,
                     database_url: str | None, jobs: int, publishing: asyncio.Task[float],
                     timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(database_url) if database_url else None
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not publishing.done():
                continue
            if conn is not None:
                # The warm-up task's row is one more.
                if await conn.fetchval(f"SELECT count(*) FROM {RESULT_TABLE}") >= jobs + 1:
                    return True
            elif await _queue_depth(connection, queue) == 0:
                return True
        return False
    finally:
        if conn is not None:
            await conn.close()


async def _cleanup(services: Services, queue: str, database: str | None) -> None:
    connection = await aio_pika.connect(services.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(queue)  # Celery's default exchange has its name
    finally:
        await connection.close()
    if database:
        await drop_database(services, database)
