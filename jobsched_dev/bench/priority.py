"""``jobsched bench priority``: a low backlog saturating the workers, then a burst of high
work. LOW low-priority no-op jobs are COPYed at once (a burn-down); once the workers are
busy with them, HIGH high-priority jobs are COPYed. Reported: how soon the high runs
started after they were queued (p50/p99; target p99 ≤ 250 ms while saturated), the share of
the runs started while high work waited (from the high fires to the last high start) that
were low (target ≥ 5 %: low never starves), the same share over the high start burst alone,
and the burn-down rate of the mixed run beside the same count at one priority, in the
same invocation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import (
    Options,
    connect,
    make_cluster,
    read_fires,
    spans,
    state_counts,
    summary_of_cpu,
    wait_finished,
)
from jobsched_dev.bench.load import copy_jobs, job_rows
from jobsched_dev.bench.stats import distribution_ms

#: The high burst comes once this share of the low backlog has finished: the workers are
#: saturated and most of the backlog still waits.
BURST_AFTER = 0.1


def _started_within(fires: list[Any], window: tuple[Any, Any]) -> tuple[list[Any], int]:
    """The runs started within ``window`` (inclusive), and how many of them were low."""
    runs = [f for f in fires if f["started_at"] is not None
            and window[0] <= f["started_at"] <= window[1]]
    return runs, sum(1 for f in runs if f["priority"] == 2)


async def run_priority(services: Services, low: int, high: int, workers: int,
                       options: Options, timeout: float = 300) -> dict[str, Any]:
    async with make_cluster(services, options) as cluster, connect(cluster.database_url) as conn:
        name = cluster.job_name("priority")
        procs = await cluster.start_pipeline(workers)
        cluster.meter.start()
        now = datetime.now(UTC)
        await copy_jobs(conn, job_rows(name, "immediate", now, low, now=now,
                                        function=options.function, priority="low"))
        committed = await conn.fetchval("SELECT now()")
        await wait_finished(conn, name, int(low * BURST_AFTER), timeout, procs, poll_s=0.05)
        burst_at = datetime.now(UTC)
        await copy_jobs(conn, job_rows(name, "immediate", burst_at, high, now=burst_at,
                                        function=options.function, priority="high"))
        done = await wait_finished(conn, name, low + high, timeout, procs)
        cluster.meter.stop()
        fires = await read_fires(conn, name)
    highs = [f for f in fires if f["priority"] == 0]
    started = [f["started_at"] for f in highs if f["started_at"] is not None]
    window = (min(started), max(started)) if started else (burst_at, burst_at)
    in_burst, lows_in_burst = _started_within(fires, window)
    # While high work waited: from the high fires' transaction to the last high start.
    # Starvation is about this span; the start burst alone can last less than a claim
    # flush's round trip (3-47 ms seen), too short to hold a run of another band.
    queued = [f["queued_at"] for f in highs if f["queued_at"] is not None]
    waited = (min(queued), window[1]) if queued else window
    in_wait, lows_in_wait = _started_within(fires, waited)
    finished = [f["finished_at"] for f in fires if f["finished_at"] is not None]
    elapsed = (max(finished) - committed).total_seconds() if finished else float("nan")
    low_waiting = sum(1 for f in fires if f["priority"] == 2
                      and (f["started_at"] is None or f["started_at"] > window[1]))
    return {
        "scenario": "priority", "low": low, "high": high, "workers": workers,
        "task": options.task, "drained": done, "states": state_counts(fires),
        "high queued -> started": distribution_ms(spans(highs, "queued_at", "started_at")),
        "high submitted -> started": distribution_ms(spans(highs, "submitted_at",
                                                           "started_at")),
        # the leader's part: from the COPY's commit to the fire's transaction
        "high submitted -> queued": distribution_ms(spans(highs, "submitted_at", "queued_at")),
        "burst_s": (window[1] - window[0]).total_seconds(),
        "runs_in_burst": len(in_burst), "low_in_burst": lows_in_burst,
        "low_share_in_burst": lows_in_burst / len(in_burst) if in_burst else float("nan"),
        "low_still_waiting_after_burst": low_waiting,
        "high_waited_s": (waited[1] - waited[0]).total_seconds(),
        "runs_while_high_waited": len(in_wait), "low_while_high_waited": lows_in_wait,
        "low_share_while_high_waited": (lows_in_wait / len(in_wait) if in_wait
                                        else float("nan")),
        "executions_per_s": len(finished) / elapsed if elapsed > 0 else float("nan"),
        "cpu": summary_of_cpu(cluster.meter.report()),
    }


async def run_one_priority(services: Services, jobs: int, workers: int,
                           options: Options, timeout: float = 300) -> dict[str, Any]:
    """The same count of no-op jobs, all at one priority: a plain burn-down."""
    from jobsched_dev.bench.throughput import burn_down

    return await burn_down(services, jobs, workers, options, timeout)


async def run_both(services: Services, low: int, high: int, workers: int,
                   options: Options) -> dict[str, Any]:
    mixed = await run_priority(services, low, high, workers, options)
    flat = await run_one_priority(services, low + high, workers, options)
    return {**mixed, "one_priority_executions_per_s": flat["executions_per_s"],
            "mixed_vs_one_priority": mixed["executions_per_s"] / flat["executions_per_s"]}
