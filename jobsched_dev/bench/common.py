"""What every scenario shares: reading a run's fires back and summarising them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobsched.adapters import postgres
from jobsched_dev.bench.cluster import BenchCluster, Services
from jobsched_dev.bench.load import COUNT_FINISHED, SELECT_FIRES
from jobsched_dev.bench.stats import distribution_ms
from jobsched_dev.bench.tasks import NOOPS
from jobsched_dev.processes import RoleProcess


@dataclass(frozen=True)
class Options:
    """What every scenario takes from the command line."""

    log_level: str = "INFO"
    keep: bool = False
    settings: tuple[tuple[str, str], ...] = ()  # extra JOBSCHED_* for the role processes
    database_url: str | None = None  # a running deployment's database: start nothing
    task: str = "sync"  # the no-op: "sync" (thread pool) or "async" (the worker's loop)
    template: str | None = None  # a database each run's database copies (a written history)

    @property
    def function(self) -> str:
        return NOOPS[self.task]


def make_cluster(services: Services, options: Options) -> BenchCluster:
    return BenchCluster(services, log_level=options.log_level, keep=options.keep,
                        settings=dict(options.settings),
                        external_database_url=options.database_url,
                        template=options.template)


@contextlib.asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection with the roles' own codecs (binary jsonb, so COPY of jsonb works)."""
    pool = await postgres.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


async def wait_finished(conn: asyncpg.Connection, name: str, expected: int, timeout: float,
                        procs: Sequence[RoleProcess] = (), poll_s: float = 0.5) -> bool:
    """Until ``expected`` executions of jobs named ``name`` have finished; False on timeout.
    The figures come from the rows' own timestamps, so the poll only decides when to stop:
    it is slow on purpose (every 50 ms it took ~10 % of the machine's CPU in a burn-down,
    a count over a join per poll, competing with what it measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
        if await conn.fetchval(COUNT_FINISHED, name) >= expected:
            return True
        await asyncio.sleep(poll_s)
    return False


def _seconds(end: datetime | None, start: datetime | None) -> float | None:
    if end is None or start is None:
        return None
    return (end - start).total_seconds()


def spans(fires: Sequence[asyncpg.Record], start: str, end: str) -> list[float]:
    out = []
    for fire in fires:
        value = _seconds(fire[end], fire[start])
        if value is not None:
            out.append(value)
    return out


async def read_fires(conn: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return await conn.fetch(SELECT_FIRES, name)


def state_counts(fires: Sequence[asyncpg.Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fire in fires:
        counts[fire["state"]] = counts.get(fire["state"], 0) + 1
    return counts


def lateness(fires: Sequence[asyncpg.Record], origin: str) -> dict[str, dict[str, float]]:
    """Distributions from ``origin`` (submitted_at or scheduled_for) to each later stamp."""
    return {
        f"{origin} -> queued": distribution_ms(spans(fires, origin, "queued_at")),
        f"{origin} -> published": distribution_ms(spans(fires, origin, "published_at")),
        f"{origin} -> started": distribution_ms(spans(fires, origin, "started_at")),
        f"{origin} -> finished": distribution_ms(spans(fires, origin, "finished_at")),
    }


def rate_between(stamps: list[datetime], low: float = 0.1, high: float = 0.9) -> float:
    """Completions per second between the ``low`` and ``high`` quantiles of their times:
    the steady rate, without the ramp-up and the tail."""
    ordered = sorted(stamps)
    if len(ordered) < 10:
        return float("nan")
    a, b = ordered[int(len(ordered) * low)], ordered[int(len(ordered) * high) - 1]
    span = (b - a).total_seconds()
    return (int(len(ordered) * high) - 1 - int(len(ordered) * low)) / span if span > 0 else \
        float("nan")


def summary_of_cpu(cpu: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {name: {k: round(v, 3) for k, v in values.items()} for name, values in cpu.items()}
