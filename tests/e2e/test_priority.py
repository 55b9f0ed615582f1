"""Priority bands end to end: with a backlog of low work saturating the worker, newly
queued high work starts within a second and low work still progresses; priority stays
with an execution through its retries, a PATCH changes later fires, and a worker killed
mid-backlog costs no execution."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import aiohttp
import asyncpg
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster

pytestmark = pytest.mark.timeout(150)


def _nap(name: str, priority: str, seconds: float) -> dict[str, object]:
    return {"name": name, "schedule": "immediate", "kind": "python", "priority": priority,
            "python": {"function": "sample_tasks:nap", "args": {"seconds": seconds}}}


async def _runs(database_url: str, prefix: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT j.name, e.state, e.priority, e.queued_at, e.started_at, e.finished_at"
            " FROM executions e JOIN jobs j ON j.id = e.job_id WHERE j.name LIKE $1"
            " ORDER BY e.started_at", prefix + "%")
    finally:
        await conn.close()


async def _until_done(database_url: str, prefix: str, count: int,
                      timeout: float = 90) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await _runs(database_url, prefix)
        if len(runs) == count and all(r["finished_at"] is not None for r in runs):
            return runs
        await asyncio.sleep(0.2)
    raise AssertionError(f"{prefix}: not all {count} finished: {await _runs(database_url, prefix)}")


async def _saturate_then_burst(cluster: LocalCluster, api: ApiClient, lows: int,
                               highs: int, spacing_s: float = 0.0) -> None:
    await asyncio.gather(*(api.create(_nap(f"low-{i:03}", "low", 0.4)) for i in range(lows)))
    await asyncio.sleep(1.5)  # the worker is saturated, a low backlog waits
    for i in range(highs):
        await api.create(_nap(f"high-{i:03}", "high", 0.05))
        await asyncio.sleep(spacing_s)


async def test_newly_queued_high_work_starts_within_a_second_of_a_low_backlog(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    cluster.start("worker", extra=("--import", "sample_tasks"), JOBSCHED_WORKER_CONCURRENCY="4")
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        await _saturate_then_burst(cluster, api, lows=60, highs=8, spacing_s=0.25)
        highs = await _until_done(cluster.database_url, "high-", 8)
        lows = await _until_done(cluster.database_url, "low-", 60)
    assert {r["state"] for r in highs + lows} == {"succeeded"}
    assert {r["priority"] for r in highs} == {0} and {r["priority"] for r in lows} == {2}
    waits = [(r["started_at"] - r["queued_at"]).total_seconds() for r in highs]
    assert max(waits) < 1.0, sorted(waits)
    # the lows queued before them were still waiting: the highs went first
    assert max(r["started_at"] for r in lows) > max(r["started_at"] for r in highs)


async def test_a_high_run_takes_a_kept_slot_while_long_low_runs_hold_the_rest(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    # 4 slots, 1 kept for high (worker_high_reserve): low runs hold at most 3
    cluster.start("worker", extra=("--import", "sample_tasks"), JOBSCHED_WORKER_CONCURRENCY="4",
                  JOBSCHED_WORKER_HIGH_RESERVE="0.25")
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        await asyncio.gather(*(api.create(_nap(f"long-low-{i}", "low", 4.0)) for i in range(6)))
        await asyncio.sleep(1.5)  # three of them run, three wait; the kept slot is free
        await api.create(_nap("kept-high", "high", 0.05))
        highs = await _until_done(cluster.database_url, "kept-high", 1)
        lows = await _until_done(cluster.database_url, "long-low-", 6)
    _assert_took_the_kept_slot(highs[0], lows, low_slots=3)


async def test_a_high_shell_run_takes_a_kept_shell_slot_while_low_shell_runs_hold_the_rest(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    # 2 shell slots, 1 kept for high: low shell runs hold at most 1, the rest queue
    cluster.start("worker", JOBSCHED_SHELL_CONCURRENCY="2", JOBSCHED_WORKER_HIGH_RESERVE="0.5")
    cluster.start("api")

    def sleeper(name: str, priority: str, seconds: str) -> dict[str, object]:
        return {"name": name, "schedule": "immediate", "kind": "shell", "priority": priority,
                "shell": {"argv": ["/bin/sleep", seconds]}}

    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        await asyncio.gather(*(api.create(sleeper(f"sh-low-{i}", "low", "3")) for i in range(3)))
        await asyncio.sleep(1.5)  # one low shell run runs, two wait for a shell slot
        await api.create(sleeper("sh-high", "high", "0.1"))
        highs = await _until_done(cluster.database_url, "sh-high", 1)
        lows = await _until_done(cluster.database_url, "sh-low-", 3)
    _assert_took_the_kept_slot(highs[0], lows, low_slots=1)


def _assert_took_the_kept_slot(high: asyncpg.Record, lows: list[asyncpg.Record],
                               low_slots: int) -> None:
    """``high`` started at once, while the first ``low_slots`` low runs still ran (it did
    not wait for one to end), and no further low run started before one of them ended
    (low never took the kept slot)."""
    assert {r["state"] for r in [high, *lows]} == {"succeeded"}, [high, *lows]
    assert (high["started_at"] - high["queued_at"]).total_seconds() < 1.0
    first_end = min(r["finished_at"] for r in lows)
    assert high["started_at"] < first_end
    assert sorted(r["started_at"] for r in lows)[low_slots] >= first_end


async def test_low_work_keeps_a_share_while_high_work_floods(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    cluster.start("worker", extra=("--import", "sample_tasks"), JOBSCHED_WORKER_CONCURRENCY="2")
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        await _saturate_then_burst(cluster, api, lows=40, highs=0)
        await asyncio.gather(*(api.create(_nap(f"high-{i:03}", "high", 0.05))
                               for i in range(80)))
        highs = await _until_done(cluster.database_url, "high-", 80)
        lows = await _until_done(cluster.database_url, "low-", 40)
    assert {r["state"] for r in highs + lows} == {"succeeded"}
    burst = (min(r["started_at"] for r in highs), max(r["started_at"] for r in highs))
    during = [r for r in lows if burst[0] < r["started_at"] < burst[1]]
    # 80 high runs took the slots 12 times in 13 (no normal work waits): low still ran
    assert during, "low work must keep progressing while high work floods"
    assert len(during) < len(highs) / 4


async def test_priority_survives_retries_and_a_patch_changes_later_fires(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    cluster.start("worker", extra=("--import", "sample_tasks"))
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        failing = await api.create({
            "name": "fails", "schedule": "immediate", "kind": "python", "priority": "high",
            "python": {"function": "sample_tasks:always_fails"},
            "retry": {"max_attempts": 3, "backoff_s": 0.1, "max_backoff_s": 0.1}})
        execution = await api.wait_terminal(failing["id"], timeout=30)
        assert execution["state"] == "dead" and execution["attempt"] == 3
        assert execution["priority"] == "high"
        assert [a["outcome"] for a in execution["attempts"]] == ["failed"] * 3

        every = await api.create({"name": "every", "schedule": "* * * * * *", "kind": "python",
                                  "python": {"function": "sample_tasks:noop"}})
        assert every["priority"] == "normal"
        await asyncio.sleep(2.5)
        status, patched, _ = await api.request("PATCH", f"/api/v1/jobs/{every['id']}",
                                               json={"priority": "low"})
        assert status == 200 and patched["priority"] == "low"
        changed_at = time.time()
        await asyncio.sleep(2.5)
        status, page, _ = await api.request("GET",
                                            f"/api/v1/jobs/{every['id']}/executions?limit=50")
        await api.request("DELETE", f"/api/v1/jobs/{every['id']}")
    before = [e for e in page["items"]
              if _epoch(e["scheduled_for"]) < changed_at - 1.5]
    after = [e for e in page["items"] if _epoch(e["scheduled_for"]) > changed_at + 1.5]
    assert before and after
    assert {e["priority"] for e in before} == {"normal"}
    assert {e["priority"] for e in after} == {"low"}


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339).timestamp()


async def test_invalid_priority_is_a_422_naming_the_field(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        status, body, _ = await api.request("POST", "/api/v1/jobs",
                                            json=_nap("bad", "urgent", 0))
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["priority"]


async def test_a_worker_killed_mid_backlog_costs_no_execution(
        local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    cluster.start("scheduler")
    workers = [cluster.start("worker", extra=("--import", "sample_tasks"),
                             JOBSCHED_WORKER_CONCURRENCY="2", JOBSCHED_WORKER_LEASE_S="3")
               for _ in range(2)]
    cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        await _saturate_then_burst(cluster, api, lows=30, highs=8)
        workers[0].kill()
        highs = await _until_done(cluster.database_url, "high-", 8)
        lows = await _until_done(cluster.database_url, "low-", 30)
    assert {r["state"] for r in highs + lows} == {"succeeded"}
    assert max((r["started_at"] - r["queued_at"]) for r in highs) < timedelta(seconds=5)
