"""``--vs celery``: the burn-down run by Celery 5 on the same RabbitMQ, in the same run.

A Celery worker (prefork, ``acks_late``, concurrency = cores) is started and ready; then N
no-op tasks are published from this process and the clock runs until all have run: with
the PostgreSQL result backend, until N result rows exist in its table; without one, until
the queue is empty (at most the worker's prefetch, a few tasks, is then still running).
Celery is an optional extra (``pip install celery sqlalchemy psycopg2-binary``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from jobsched.adapters import postgres
from jobsched.bench.cluster import Services
from jobsched.bench.common import summary_of_cpu
from jobsched.bench.procstat import CpuMeter

RESULT_TABLE = "celery_taskmeta"


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
    from jobsched.bench.celery_app import noop

    began = time.perf_counter()
    for _ in range(count):
        noop.apply_async()
    return time.perf_counter() - began


async def run_celery_burn_down(services: Services, jobs: int, with_results: bool,
                               concurrency: int | None = None,
                               timeout: float = 600) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    queue = f"jobsched-bench-celery-{run}"
    database = f"jobsched_bench_celery_{run}"
    database_url = services.database_url(database)
    broker = services.amqp_url.rstrip("/") + "//" if services.amqp_url.endswith(":5672/") \
        else services.amqp_url
    backend = ("db+" + database_url.replace("postgresql://", "postgresql+psycopg2://", 1)
               if with_results else "")
    env = {**os.environ, "CELERY_BENCH_BROKER": broker, "CELERY_BENCH_BACKEND": backend,
           "CELERY_BENCH_QUEUE": queue}
    os.environ.update({k: env[k] for k in ("CELERY_BENCH_BROKER", "CELERY_BENCH_BACKEND",
                                           "CELERY_BENCH_QUEUE")})
    sys.modules.pop("jobsched.bench.celery_app", None)  # re-read the environment
    if with_results:
        await postgres.create_database(database_url)
    concurrency = concurrency or os.cpu_count() or 2
    log_path = Path(tempfile.mkdtemp(prefix="jobsched-bench-celery-")) / "worker.log"
    worker = await asyncio.to_thread(_start_worker, env, concurrency, queue, log_path)
    meter = CpuMeter()
    connection = await aio_pika.connect(services.amqp_url, timeout=10)
    try:
        deadline = time.monotonic() + 30
        while len(_children(worker.pid)) < concurrency or not await _queue_exists(
                connection, queue):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("celery worker did not start:\n"
                                   + log_path.read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.1)
        if with_results:
            await asyncio.to_thread(_warm_backend)
        meter.add("celery worker", worker.pid)
        for n, child in enumerate(_children(worker.pid)):
            meter.add(f"celery child {n + 1}", child)
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


def _start_worker(env: dict[str, str], concurrency: int, queue: str,
                  log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "jobsched.bench.celery_app", "worker",
             "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queue],
            env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _warm_backend() -> None:
    """One task through the backend, so its table exists before the clock starts."""
    from jobsched.bench.celery_app import noop

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
    finally:
        await connection.close()
    if database:
        conn = await asyncpg.connect(services.database_url("postgres"), timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()
