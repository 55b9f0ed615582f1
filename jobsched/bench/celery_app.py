"""The Celery application ``jobsched bench throughput --vs celery`` runs: one no-op task.

Configured from the environment the peer sets for its worker and producer:
CELERY_BENCH_BROKER, CELERY_BENCH_BACKEND (empty: no result backend), CELERY_BENCH_QUEUE.
"""

from __future__ import annotations

import os

from celery import Celery

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
)


@app.task(name="jobsched_bench.noop")
def noop() -> None:
    """Does nothing, like ``jobsched.bench.tasks:noop``."""
