"""The Celery application ``jobsched bench … --vs celery`` runs: a no-op task (throughput)
and a task that records when it started, fired by beat (herd).

Configured from the environment the peer sets for its worker, beat and producer:
CELERY_BENCH_BROKER, CELERY_BENCH_BACKEND (empty: no result backend), CELERY_BENCH_QUEUE,
CELERY_BENCH_BEAT_ENTRIES (beat entries ``herd-0`` … on ``crontab()``, every minute;
default none) and CELERY_BENCH_STAMPS (the file ``stamp`` appends to).
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.schedules import crontab

_backend = os.environ.get("CELERY_BENCH_BACKEND") or None

app = Celery("jobsched_bench", broker=os.environ.get("CELERY_BENCH_BROKER",
                                                     "amqp://guest:guest@127.0.0.1:5672//"),
             backend=_backend)
app.conf.update(
    task_default_queue=os.environ.get("CELERY_BENCH_QUEUE", "jobsched-bench-celery"),
    task_acks_late=True,
    task_ignore_result=_backend is None,
    task_serializer="json",
    result_extended=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    beat_schedule={
        f"herd-{n}": {"task": "jobsched_bench.stamp", "schedule": crontab(),
                      "args": (f"herd-{n}",)}
        for n in range(int(os.environ.get("CELERY_BENCH_BEAT_ENTRIES") or 0))
    },
)


@app.task(name="jobsched_bench.noop")
def noop() -> None:
    """Does nothing, like ``jobsched_dev.bench.tasks:noop``."""


@app.task(name="jobsched_bench.stamp")
def stamp(entry: str) -> None:
    """Append "<time.time()> <entry>" to CELERY_BENCH_STAMPS: one write, O_APPEND."""
    started = time.time()
    fd = os.open(os.environ["CELERY_BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, f"{started:.6f} {entry}\n".encode())
    finally:
        os.close(fd)
