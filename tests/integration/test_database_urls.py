"""Several database hosts in one URL, and the api's read replica with the primary as its
fallback, against the real server (the failover itself is tests/chaos, scenario 9)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobsched.adapters import postgres
from jobsched.adapters.postgres.jobs import PostgresJobs
from jobsched.adapters.postgres.replica import ReplicaReads
from jobsched.ports import JobRepository, Row
from jobsched.settings import Settings
from jobsched_dev.processes import free_port
from tests.integration.test_postgres import _job


def _with_hosts(url: str, *hosts: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@" * bool(user) + ",".join(hosts)))


async def test_a_url_of_several_hosts_connects_to_the_read_write_one(database_url: str) -> None:
    here = urlsplit(database_url).netloc.rpartition("@")[2]
    down = f"127.0.0.1:{free_port()}"  # nothing listens: the first host is "dead"
    settings = Settings(database_url=_with_hosts(database_url, down, here))
    assert settings.database_url.endswith("?target_session_attrs=read-write")
    pool = await postgres.create_pool(settings.database_url)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
        await PostgresJobs(pool).ping()
    finally:
        await pool.close()


@pytest.fixture
async def stores(database_url: str,
                 ) -> AsyncIterator[tuple[asyncpg.Pool, PostgresJobs, PostgresJobs]]:
    """A primary store and a second pool on the same database standing in as the replica."""
    primary = await postgres.create_pool(database_url)
    replica = await postgres.create_pool(database_url, min_size=0)
    yield primary, PostgresJobs(primary), PostgresJobs(replica)
    await replica.close()
    await primary.close()


async def test_reads_go_to_the_replica_and_missing_rows_to_the_primary(
        stores: tuple[asyncpg.Pool, PostgresJobs, PostgresJobs]) -> None:
    pool, primary, replica = stores
    reads = ReplicaReads(replica, primary)
    job_id = await _job(pool, datetime.now(UTC))
    found = await reads.read(lambda s: s.get_job(job_id, "default"), confirm_missing=True)
    assert found is not None and found["id"] == job_id
    assert reads.served == {"replica": 1, "primary": 0}
    # A row the replica does not have (as after a create it has not replayed yet) is
    # looked up on the primary before the api answers 404.
    absent = await reads.read(lambda s: s.get_job(uuid.uuid4(), "default"),
                              confirm_missing=True)
    assert absent is None
    assert reads.served == {"replica": 1, "primary": 1}


async def test_a_dead_replica_falls_back_to_the_primary_and_rests(database_url: str) -> None:
    primary_pool = await postgres.create_pool(database_url)
    dead_url = _with_hosts(database_url, f"127.0.0.1:{free_port()}")
    dead_pool = await postgres.create_pool(dead_url, min_size=0)  # does not connect yet
    try:
        primary = PostgresJobs(primary_pool)
        reads = ReplicaReads(PostgresJobs(dead_pool), primary, rest_s=60)
        job_id = await _job(primary_pool, datetime.now(UTC))
        calls: list[JobRepository] = []

        async def get(store: JobRepository) -> Row | None:
            calls.append(store)
            return await store.get_job(job_id, "default")

        assert (await reads.read(get))["id"] == job_id
        assert calls == [reads.replica, primary] and not reads.healthy
        # While it rests, reads go straight to the primary: no connect attempt each time.
        assert (await reads.read(get))["id"] == job_id
        assert calls[2:] == [primary]
        assert reads.describe() == {"healthy": False, "served_replica": 0,
                                    "served_primary": 2}
    finally:
        await dead_pool.close()
        await primary_pool.close()


async def test_an_error_that_is_not_the_replicas_does_not_bench_it(
        stores: tuple[asyncpg.Pool, PostgresJobs, PostgresJobs]) -> None:
    _pool, primary, replica = stores
    reads = ReplicaReads(replica, primary, rest_s=60)

    async def picky(store: JobRepository) -> str:
        if store is replica:
            raise ValueError("bad input, not a sick replica")
        return "primary"

    assert await reads.read(picky) == "primary"
    assert reads.healthy  # still used for the next read
