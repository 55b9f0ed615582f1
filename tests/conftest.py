"""Fixtures on real services: each test gets its own database (cloned from a migrated
template), its own cluster name (so its own RabbitMQ queues and ZooKeeper chroot)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from jobsched.adapters import postgres
from jobsched.settings import Settings
from jobsched_dev.zookeeper import ensure_zookeeper
from tests.helpers import (
    AMQP_URL,
    PG_ADMIN_URL,
    ZK_HOSTS,
    clone_database,
    db_url,
    delete_queues,
    drop_database,
)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for ``pytest -n 2 --dist loadgroup`` (make test): a module's tests run on one
    process, so its module-scoped cluster starts once; the chaos suite is one group, sharing
    its private PostgreSQL and its deployment. Tests marked ``serial`` stop or load what
    every test uses (the machine's RabbitMQ): make test runs them alone, after the rest."""
    chaos = os.path.join(HERE, "chaos") + os.sep
    for item in items:
        path = str(item.path)
        group = "chaos" if path.startswith(chaos) else os.path.relpath(path, HERE)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def zookeeper() -> str:
    ensure_zookeeper(ZK_HOSTS)  # scripts/zookeeper.sh start, if nothing answers there
    return ZK_HOSTS


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"jobsched_tmpl_{os.getpid()}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await postgres.migrate(db_url(name))

    asyncio.run(create())
    yield name
    asyncio.run(drop_database(name))

@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = await clone_database(template_db)
    yield db_url(name)
    await drop_database(name)


@pytest.fixture
async def cluster() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    await delete_queues(name)


@pytest.fixture
def settings(database_url: str, cluster: str, zookeeper: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        zookeeper_hosts=zookeeper,
        cluster=cluster,
        instance=f"test-{cluster}",
        worker_lease_s=30,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await postgres.create_pool(database_url)
    yield pool
    await pool.close()
