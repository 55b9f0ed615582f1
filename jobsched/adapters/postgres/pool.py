"""Connections to PostgreSQL: the pool every role shares, the errors that mean "not
reachable now", and the fenced transaction every leader write runs in."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from jobsched.adapters.postgres.sql import load_queries
from jobsched.ports import StaleEpochError

# What a lost, refused or not-yet-usable connection raises: the server is unreachable,
# restarting or failing over (asyncpg's InternalClientError comes from a connection that
# broke in the middle of an operation). Callers answer 503 or retry; never a 500.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.InternalClientError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError, asyncpg.exceptions.ReadOnlySQLTransactionError,
)
#: Any error of the database itself, for callers that answer "unavailable" to all of them
#: (e.g. a token lookup on a database whose schema is not migrated yet).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

_FENCE = load_queries("leader.sql").check_epoch


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec: orjson both ways, and COPY of jsonb columns works.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Releasing a connection to the pool: nothing to reset on the server. jobsched keeps
    no session state on pooled connections (its lock_timeout and advisory locks are
    transaction-scoped; LISTEN has connections of its own), so asyncpg's default RESET
    ALL / UNLISTEN / pg_advisory_unlock_all round trip on every release is skipped.
    asyncpg still rolls back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """``server_settings``: session settings of every connection of the pool (e.g. the
    webhook deliverers' ``synchronous_commit``)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        timeout=10,
        server_settings=server_settings,
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def fenced(pool: asyncpg.Pool, epoch: int) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that commits only while ``epoch`` is the leader's (guarantee 1): it
    first reads the leader row FOR SHARE, so a newer leader's claim waits for it to end,
    and raises StaleEpochError (nothing written) once another leader holds the fence."""
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchval(_FENCE.text)
        if current != epoch:
            raise StaleEpochError(f"epoch {epoch} superseded by {current}")
        yield conn


async def create_database(dsn: str) -> bool:
    """Create the database the URL names if it is missing (via the `postgres` database)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return False
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        # An identifier cannot be a parameter: quoted here, as PostgreSQL's quote_ident.
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()
