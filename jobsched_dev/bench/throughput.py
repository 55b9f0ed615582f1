"""``jobsched bench throughput``: no-op python jobs end to end, every state change durable.

burn-down: one scheduler and W workers are started and ready; N immediate jobs are COPYed
in one transaction (so all fall due at once) and a NOTIFY wakes the scheduler; the run
ends when every execution has finished. Executions/s is N over the time from the commit
to the last ``finished_at``; the steady rate leaves out the first and last 10 %.

steady: the same processes take an offered load stepped through RATES jobs/s, each for
STEP seconds, inserted every 20 ms with the submit time stamped by PostgreSQL; a step
that cannot drain within its own length again (or whose achieved rate falls below 90 %
of the offered one) is the last.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import (
    Options,
    connect,
    lateness,
    make_cluster,
    rate_between,
    read_fires,
    spans,
    state_counts,
    summary_of_cpu,
    wait_finished,
)
from jobsched_dev.bench.history import preload_history
from jobsched_dev.bench.load import copy_jobs, insert_immediate, job_rows
from jobsched_dev.bench.stats import distribution_ms

TICK_S = 0.02


async def burn_down(services: Services, jobs: int, workers: int, options: Options,
                    timeout: float = 120, history: int = 0) -> dict[str, Any]:
    """``history``: finished executions written over the last 30 days first."""
    async with make_cluster(services, options) as cluster, connect(cluster.database_url) as conn:
        name = cluster.job_name("burn-down")
        loaded = await preload_history(conn, history)
        procs = await cluster.start_pipeline(workers)
        cluster.meter.start()
        started = time.monotonic()
        now = datetime.now(UTC)
        await copy_jobs(conn, job_rows(name, "immediate", now, jobs, now=now,
                                        function=options.function))
        committed = await conn.fetchval("SELECT now()")
        done = await wait_finished(conn, name, jobs, timeout, procs)
        wall = time.monotonic() - started
        cluster.meter.stop()
        fires = await read_fires(conn, name)
    finished = [f["finished_at"] for f in fires if f["finished_at"] is not None]
    last = max(finished) if finished else committed
    elapsed = (last - committed).total_seconds()
    return {
        "scenario": "throughput", "mode": "burn-down", "jobs": jobs, "workers": workers,
        "task": options.task, "history": history, "history_preload_s": loaded["preload_s"],
        "drained": done, "finished": len(finished), "states": state_counts(fires),
        "wall_s": wall, "drain_s": elapsed,
        "executions_per_s": len(finished) / elapsed if elapsed > 0 else float("nan"),
        "steady_executions_per_s": rate_between(finished),
        "latency_ms": {
            **lateness(fires, "submitted_at"),
            "queued -> started": distribution_ms(spans(fires, "queued_at", "started_at")),
            "started -> finished": distribution_ms(spans(fires, "started_at", "finished_at")),
        },
        "cpu": summary_of_cpu(cluster.meter.report()),
    }


async def steady(services: Services, rates: list[int], step_s: float, workers: int,
                 options: Options) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    async with make_cluster(services, options) as cluster, connect(cluster.database_url) as conn:
        procs = await cluster.start_pipeline(workers)
        # Each step adds tens of thousands of rows. A server without autovacuum (this
        # project's CI machine has it off) would plan every later step on the statistics
        # of empty tables and through their dead rows: do its work between the steps.
        vacuum = await conn.fetchval("SELECT current_setting('autovacuum') = 'off'")
        for rate in rates:
            name = cluster.job_name(f"steady-{rate}")
            if vacuum:
                await conn.execute("VACUUM (ANALYZE) jobs, executions, attempts")
            cluster.meter.start()
            offered = await _offer(conn, name, rate, step_s, options.function)
            drained = await wait_finished(conn, name, offered, step_s + 5, procs)
            cluster.meter.stop()
            fires = await read_fires(conn, name)
            finished = [f["finished_at"] for f in fires if f["finished_at"] is not None]
            submitted = [f["submitted_at"] for f in fires]
            span = (max(finished) - min(submitted)).total_seconds() if finished else 0.0
            achieved = len(finished) / span if span > 0 else float("nan")
            starts = distribution_ms(spans(fires, "submitted_at", "started_at"))
            steps.append({
                "offered_per_s": rate, "submitted": offered, "finished": len(finished),
                "drained": drained, "achieved_per_s": achieved,
                "submit -> started": starts,
                "submit -> finished": distribution_ms(spans(fires, "submitted_at",
                                                            "finished_at")),
                "cpu": summary_of_cpu(cluster.meter.report()),
            })
            if not drained or achieved < 0.9 * rate:
                break
    return {"scenario": "throughput", "mode": "steady", "workers": workers, "step_s": step_s,
            "task": options.task, "vacuumed_between_steps": vacuum,
            "steps": steps}


async def _offer(conn: Any, name: str, rate: int, seconds: float, function: str) -> int:
    """Insert jobs at ``rate``/s for ``seconds``, catching up if a tick ran late."""
    began = time.monotonic()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - began)) + 1)
        if due > sent:
            await insert_immediate(conn, name, due - sent, function)
            sent = due
        await asyncio.sleep(TICK_S)
    return sent
