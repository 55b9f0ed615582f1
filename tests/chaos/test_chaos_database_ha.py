"""Database high availability (issue 3, item 5): a primary and a streaming standby made by
``pg_basebackup``, synchronous replication (a commit is acknowledged once the standby has
it), the roles given both hosts in one URL and the standby as the api's read replica.

The primary is killed (``kill -9``) under load and the standby promoted: the roles follow
the promotion by themselves, reads keep being answered from the replica meanwhile, and no
job the api acknowledged is lost; every fire still runs exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobsched_dev.api_client import ApiClient
from jobsched_dev.devcluster import DevCluster
from jobsched_dev.processes import free_port
from tests.chaos.conftest import chaos_deployment
from tests.chaos.harness import (
    PG_BIN,
    PrivatePostgres,
    RunLog,
    Submitter,
    assert_no_missed_fire,
    assert_one_execution_per_fire,
    assert_ran_once_per_fire,
    cron_every_second,
    record,
    stop_jobs,
    wait_terminal,
)

STANDBY_NAME = "walreceiver"  # the application_name a standby's WAL receiver reports


@dataclass
class Pair:
    primary: PrivatePostgres
    standby: PrivatePostgres

    def url(self, *, attrs: str = "read-write") -> str:
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},"
                f"127.0.0.1:{self.standby.port}/jobsched?target_session_attrs={attrs}")

    @property
    def standby_url(self) -> str:
        return self.standby.url("jobsched")


async def _replication(primary_url: str, timeout: float = 30) -> tuple[str, str]:
    """(state, sync_state) of the standby as the primary sees it, once it streams."""
    deadline = time.monotonic() + timeout
    while True:
        conn = await asyncpg.connect(primary_url, timeout=10)
        try:
            row = await conn.fetchrow("SELECT state, sync_state FROM pg_stat_replication")
        finally:
            await conn.close()
        if (row is not None and row["state"] == "streaming") or time.monotonic() > deadline:
            return (row["state"], row["sync_state"]) if row else ("absent", "")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    if not (PG_BIN / "pg_basebackup").exists():
        pytest.skip(f"needs pg_basebackup under {PG_BIN} (set JOBSCHED_TEST_PG_BIN)")
    # Synchronous replication on the primary only (a command-line option, so the base
    # backup does not copy it): the promoted standby must not wait for a standby of its own.
    primary = PrivatePostgres(free_port(),
                              f"-c synchronous_standby_names={STANDBY_NAME}").init()
    standby = PrivatePostgres(free_port())
    try:
        primary.start()
        standby.base_backup(primary).start()
        yield Pair(primary, standby)
    finally:
        standby.destroy()
        primary.destroy()


@pytest.fixture(scope="module")
def ha_cluster(pair: Pair, request: pytest.FixtureRequest) -> Iterator[DevCluster]:
    with chaos_deployment(pair.url(), "chaos-ha", request,
                          {"JOBSCHED_DATABASE_READ_URL": pair.standby_url},
                          schedulers=2, apis=2, workers=2) as cluster:
        yield cluster


@pytest.fixture
async def api(ha_cluster: DevCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, ha_cluster.api_urls, timeout_s=10)


async def _read_stats(api: ApiClient, url: str) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/readyz", url=url)
    assert status == 200, body
    return body["postgres_read"]


async def _reader(api: ApiClient, job_ids: list[str], results: list[tuple[float, int]],
                  stop: asyncio.Event) -> None:
    """GET the jobs created before the failure, all the time: (when, status) of each."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            status, _, _ = await api.request("GET", f"/api/v1/jobs/{job_ids[n % len(job_ids)]}")
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        results.append((time.time(), status))
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_primary_killed_and_standby_promoted(pair: Pair, ha_cluster: DevCluster,
                                                   api: ApiClient) -> None:
    """Scenario 9: kill -9 of the PostgreSQL primary under load, then promotion of its
    synchronous standby. The roles reconnect to the promoted server on their own (the URL
    names both hosts, target_session_attrs=read-write); the api's reads keep being answered
    by the replica through the outage; every job acknowledged with 201 before or after is
    on the new primary and runs; one execution per fire; no 500."""
    assert await _replication(pair.primary.url("postgres")) == ("streaming", "sync")
    runlog = RunLog(Path(ha_cluster.env["CHAOS_RUNLOG"]))
    runlog.mark()
    created = await asyncio.gather(*(api.create(cron_every_second(f"ha-{i}"))
                                     for i in range(20)))
    jobs = [job["id"] for job in created]
    submitter = Submitter(api, every_s=0.1)
    submitter.start()
    reads: list[tuple[float, int]] = []
    stop_reading = asyncio.Event()
    reader = asyncio.create_task(_reader(api, jobs, reads, stop_reading))
    try:
        await asyncio.sleep(4)
        served = [await _read_stats(api, url) for url in ha_cluster.api_urls]
        assert all(s["served_replica"] > 0 for s in served), served

        killed_at = time.time()
        pair.primary.kill()
        await asyncio.sleep(4)  # the time an operator (or Patroni) takes to decide
        promoted_at = time.time()
        pair.standby.promote()
        back = await _first_acknowledged_after(submitter, promoted_at, timeout=60)
        await asyncio.sleep(5)
    finally:
        stop_reading.set()
        await reader
        await submitter.stop()
    new_primary = pair.standby_url
    await stop_jobs(new_primary, jobs)

    statuses = Counter(status for _, status, _, _ in submitter.answers)
    assert 500 not in statuses and set(statuses) <= {201, 503}, statuses
    assert statuses[503] > 0, "no submit was refused while there was no primary"
    before = [a for a in submitter.answers if a[1] == 201 and a[0] < killed_at]
    after = [a for a in submitter.answers if a[1] == 201 and a[0] > promoted_at]
    assert before and after
    outage_reads = Counter(status for t, status in reads if killed_at + 1 < t < promoted_at)
    assert outage_reads and set(outage_reads) == {200}, outage_reads  # the replica answered

    conn = await asyncpg.connect(new_primary, timeout=10)
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
        present = {str(r[0]) for r in await conn.fetch(
            "SELECT id FROM jobs WHERE id = ANY($1::uuid[])", submitter.acknowledged + jobs)}
    finally:
        await conn.close()
    lost = set(submitter.acknowledged + jobs) - present
    assert not lost, f"{len(lost)} acknowledged jobs lost in the failover: {sorted(lost)[:5]}"

    fires = await wait_terminal(new_primary, jobs + submitter.acknowledged, timeout=60)
    assert {f.job_id for f in fires} >= set(submitter.acknowledged)  # every one ran
    assert_one_execution_per_fire(fires)
    coalesced = assert_no_missed_fire([f for f in fires if f.job_id in set(jobs)])
    assert_ran_once_per_fire(runlog.read([f.job_id for f in fires]))
    assert Counter(f.state for f in fires).keys() == {"succeeded"}
    record("database_failover", primary_down_s=round(promoted_at - killed_at, 1),
           first_201_after_promotion_s=round(back, 2), answers=dict(statuses),
           acknowledged=len(submitter.acknowledged), reads_during_outage=dict(outage_reads),
           executions=len(fires), coalesced_fires=coalesced)


async def _first_acknowledged_after(submitter: Submitter, since: float,
                                    timeout: float) -> float:
    """Seconds from ``since`` until the api acknowledged a job again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [a[0] for a in submitter.answers if a[1] == 201 and a[0] > since]
        if later:
            return min(later) - since
        await asyncio.sleep(0.1)
    raise AssertionError(f"no job acknowledged within {timeout:g}s of the promotion")
