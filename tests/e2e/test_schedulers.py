"""Several schedulers at once: exactly one execution per fire, and a standby that takes over."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import datetime, timedelta

import aiohttp
import asyncpg
import pytest

from jobsched.settings import Settings
from jobsched_dev.api_client import ApiClient
from jobsched_dev.zookeeper import granted_session_timeout, tick_s
from tests.e2e.conftest import LocalCluster

pytestmark = pytest.mark.timeout(120)


async def _fires(database_url: str) -> list[tuple[str, datetime, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT job_id, scheduled_for, epoch FROM executions")
        return [(str(r["job_id"]), r["scheduled_for"], r["epoch"]) for r in rows]
    finally:
        await conn.close()


async def test_two_schedulers_make_exactly_one_execution_per_fire(
    local_cluster: LocalCluster,
) -> None:
    local_cluster.start("scheduler")
    local_cluster.start("scheduler")
    local_cluster.start("worker", extra=("--import", "sample_tasks"))
    local_cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        jobs = [await api.create({
            "name": f"tick-{i}", "schedule": "* * * * * *", "kind": "python",
            "python": {"function": "sample_tasks:noop"},
        }) for i in range(5)]
        await asyncio.sleep(5.5)
        for job in jobs:
            await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    fires = await _fires(local_cluster.database_url)
    per_fire = Counter((job, at) for job, at, _ in fires)
    assert len(per_fire) >= 20, len(per_fire)
    assert max(per_fire.values()) == 1
    # Every job fired every second from its first fire on: nothing missed.
    for job in jobs:
        times = sorted(at for j, at, _ in fires if j == job["id"])
        assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times))
    assert len({epoch for _, _, epoch in fires}) == 1  # one leader the whole time


async def takeover_bound(hosts: str) -> timedelta:
    """How long a standby may take to lead after the leader's kill -9: the session timeout
    the server grants the schedulers, plus one server tick (a dead session is expired on the
    next tick after its timeout), plus 0.5 s for the standby to notice and report it.

    The granted timeout comes from the server's answer to a session request like the
    schedulers' (aiozk's negotiated timeout): servers clamp requests to their own bounds
    (stock ZooKeeper, 2 s ticks: at least 4 s), and that answer needs no four-letter-word
    whitelist. The tick comes from ``conf`` where the server allows it; where it does not,
    from the grant: ZooKeeper's default minimum session timeout is two ticks.
    """
    granted = await granted_session_timeout(hosts, Settings().zookeeper_session_timeout_s)
    tick = tick_s(hosts) or granted / 2
    return timedelta(seconds=granted + tick + 0.5)


async def test_standby_takes_over_after_leader_is_killed(local_cluster: LocalCluster) -> None:
    bound = await takeover_bound(local_cluster.zookeeper)
    first = local_cluster.start("scheduler")
    await asyncio.sleep(0.5)  # let the first win the election
    second = local_cluster.start("scheduler")
    local_cluster.start("worker", extra=("--import", "sample_tasks"))
    local_cluster.start("api")
    assert first.readyz()[1]["scheduler"]["leader"] is True
    assert second.readyz()[1]["scheduler"]["leader"] is False
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        job = await api.create({
            "name": "tick", "schedule": "* * * * * *", "kind": "python",
            "python": {"function": "sample_tasks:noop"},
        })
        await asyncio.sleep(2.5)
        first.kill()  # kill -9: no resignation, its ZooKeeper session must expire
        killed_at = datetime.now().astimezone()
        for _ in range(100):
            if second.readyz()[1]["scheduler"]["leader"]:
                break
            await asyncio.sleep(0.1)
        took_over = datetime.now().astimezone()
        assert second.readyz()[1]["scheduler"]["leader"] is True
        await asyncio.sleep(2.5)
        await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert took_over - killed_at < bound, (took_over - killed_at, bound)
    fires = await _fires(local_cluster.database_url)
    times = sorted(at for _, at, _ in fires)
    epochs = {epoch for _, _, epoch in fires}
    assert len(epochs) == 2  # fires by both leaders
    assert len(times) == len(set(times))  # no duplicate
    # Nothing missed: every second is there, the gap's fires coalesced into one (run_once).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(1 for g in gaps if g > timedelta(seconds=1)) <= 1
