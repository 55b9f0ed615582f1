"""Helpers shared by the test tiers: service addresses, databases, queues, ports."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from jobsched.adapters import postgres
from jobsched.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "JOBSCHED_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("JOBSCHED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ZK_PORT = int(os.environ.get("JOBSCHED_TEST_ZOOKEEPER_PORT", "2181"))
ZK_HOSTS = f"127.0.0.1:{ZK_PORT}"


def db_url(name: str) -> str:
    return urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_database(template: str | None = None) -> str:
    """A new database of a unique name (a copy of ``template`` if given); its name."""
    name = f"jobsched_t_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template is not None else ""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    return name


async def clone_database(template: str) -> str:
    return await create_database(template)


@contextlib.asynccontextmanager
async def database_at(version: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A new database migrated up to ``version`` only (an existing deployment that a later
    migration upgrades): its URL and the migrations applied; dropped afterwards."""
    name = await create_database()
    url = db_url(name)
    try:
        yield url, await postgres.migrate(url, until=version)
    finally:
        await drop_database(name)


async def delete_queues(cluster: str) -> None:
    settings = Settings(cluster=cluster)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for queue in (*settings.queue_names.values(), settings.dead_letter_queue):
            await channel.queue_delete(queue)
        await channel.exchange_delete(settings.dead_letter_exchange)
    finally:
        await connection.close()
