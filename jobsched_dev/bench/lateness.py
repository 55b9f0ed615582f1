"""``jobsched bench lateness`` and ``jobsched bench herd``: how late fires start.

lateness: K cron jobs firing every second (``* * * * * *``) for T seconds, with a scheduler
and W workers ready before the first fire. Lateness is measured from each fire's due time
(``scheduled_for``) to its ``queued_at`` (execution committed), ``published_at`` (confirmed
by RabbitMQ), ``started_at`` (claimed by a worker) and ``finished_at``; all are PostgreSQL
``now()`` on the same host clock. Missed fires are the (job, second) pairs of the window
with no execution; duplicates are extra executions of one fire or extra attempts of one
execution (every job allows a single attempt).

herd: N one-shot jobs all due at the same second; read back once all have finished, so
``started_at`` is each worker's own start (the claim's is provisional).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from jobsched.adapters import postgres
from jobsched_dev.bench.cluster import BenchCluster, Services
from jobsched_dev.bench.common import (
    Options,
    connect,
    lateness,
    make_cluster,
    read_fires,
    state_counts,
    summary_of_cpu,
    wait_finished,
)
from jobsched_dev.bench.history import preload_history, retention_pass
from jobsched_dev.bench.load import (
    COUNT_FINISHED_BETWEEN,
    DUPLICATE_FIRES,
    copy_jobs,
    copy_many_jobs,
    job_rows,
    next_whole_second,
)

EVERY_SECOND = "* * * * * *"
NEVER_DURING_RUN = "0 0 1 1 *"  # active, but next due on the 1st of January
GRACE_S = 5.0


# The retention pass in a run with history: a day under the 30 days written, so that the
# oldest day partitions are dropped while the fires go on.
RETENTION_IN_RUN = timedelta(days=29)


async def preload_idle(conn: Any, count: int) -> float:
    """COPY ``count`` active schedules that will not fall due during the run; seconds taken."""
    if count <= 0:
        return 0.0
    began = asyncio.get_running_loop().time()
    now = datetime.now(UTC)
    january = datetime(now.year + 1, 1, 1, tzinfo=UTC)
    await copy_many_jobs(conn, "bench-idle", NEVER_DURING_RUN, january, count)
    await conn.execute("VACUUM ANALYZE jobs")
    return asyncio.get_running_loop().time() - began


async def _sleep_until(at: datetime) -> None:
    await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))


async def _wait_finished(conn: Any, name: str, first: datetime, end: datetime,
                         expected: int, cluster: BenchCluster) -> None:
    """Until every fire of the window has finished (and so carries its real start)."""
    deadline = datetime.now(UTC) + timedelta(seconds=GRACE_S)
    while datetime.now(UTC) < deadline:
        for proc in cluster.processes:
            proc.check_alive()
        if await conn.fetchval(COUNT_FINISHED_BETWEEN, name, first, end) >= expected:
            return
        await asyncio.sleep(0.25)


async def _duplicates(conn: Any, name: str, fires: list[Any]) -> int:
    extra_attempts = sum(max(0, f["attempts"] - 1) for f in fires)
    return int(await conn.fetchval(DUPLICATE_FIRES, name)) + extra_attempts


async def run_lateness(services: Services, jobs: int, seconds: int, workers: int,
                       options: Options, idle_schedules: int = 0,
                       history: int = 0) -> dict[str, Any]:
    """``history``: finished executions written over the last 30 days first; then a
    retention pass runs halfway through the fires (timed; it drops the oldest days)."""
    async with make_cluster(services, options) as cluster, \
            connect(cluster.database_url) as conn:
        name = cluster.job_name("lateness")
        preload_s = await preload_idle(conn, idle_schedules)
        loaded = await preload_history(conn, history)
        await cluster.start_pipeline(workers)
        first = next_whole_second(datetime.now(UTC), 1.0)
        await copy_jobs(conn, job_rows(name, EVERY_SECOND, first, jobs,
                                        function=options.function))
        await _sleep_until(first)
        cluster.meter.start()
        end = first + timedelta(seconds=seconds)
        await _sleep_until(first + timedelta(seconds=seconds / 2))
        retention = None
        if history:
            pool = await postgres.create_pool(cluster.database_url, min_size=1, max_size=1)
            try:
                retention = await retention_pass(pool, RETENTION_IN_RUN)
            finally:
                await pool.close()
        await _sleep_until(end)
        cluster.meter.stop()
        await _wait_finished(conn, name, first, end, jobs * seconds, cluster)
        fires = [f for f in await read_fires(conn, name) if first <= f["scheduled_for"] < end]
        duplicates = await _duplicates(conn, name, fires)
    expected = jobs * seconds
    return {
        "scenario": "lateness", "jobs": jobs, "seconds": seconds, "workers": workers,
        "task": options.task,
        "idle_schedules": idle_schedules, "preload_s": preload_s,
        "history": history, "history_preload_s": loaded["preload_s"], "retention": retention,
        "expected_fires": expected, "fires": len(fires),
        "missed": expected - len(fires),
        "not_started": sum(1 for f in fires if f["started_at"] is None),
        "duplicates": duplicates, "states": state_counts(fires),
        "latency_ms": lateness(fires, "scheduled_for"),
        "cpu": summary_of_cpu(cluster.meter.report()),
    }


async def run_herd(services: Services, jobs: int, workers: int, options: Options,
                   timeout: float = 120) -> dict[str, Any]:
    async with make_cluster(services, options) as cluster, \
            connect(cluster.database_url) as conn:
        name = cluster.job_name("herd")
        await cluster.start_pipeline(workers)
        due = next_whole_second(datetime.now(UTC), 1.5)
        await copy_jobs(conn, job_rows(name, due.isoformat().replace("+00:00", "Z"), due, jobs,
                                        function=options.function))
        await _sleep_until(due)
        cluster.meter.start()
        # Until finished: the claim's started_at is provisional (the due time, for a run
        # fired ahead); the worker's own start comes with its result.
        await wait_finished(conn, name, jobs, timeout, cluster.processes)
        cluster.meter.stop()
        fires = await read_fires(conn, name)
        duplicates = await _duplicates(conn, name, fires)
    started = [f["started_at"] for f in fires if f["started_at"] is not None]
    all_started_s = (max(started) - due).total_seconds() if len(started) == jobs else None
    return {
        "scenario": "herd", "jobs": jobs, "workers": workers, "task": options.task,
        "fires": len(fires), "started": len(started), "missed": jobs - len(fires),
        "duplicates": duplicates, "states": state_counts(fires),
        "all_started_after_s": all_started_s,
        "target_all_started_within_5s": all_started_s is not None and all_started_s <= 5.0,
        "latency_ms": lateness(fires, "scheduled_for"),
        "cpu": summary_of_cpu(cluster.meter.report()),
    }
