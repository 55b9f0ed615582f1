"""Whether the database a role connects to is one it can work on: it exists, and every
migration this version ships is applied. Readiness and start-up messages use these, so
a person is told which command fixes it (``jobsched migrate``) instead of meeting
``relation … does not exist`` in a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from jobsched.adapters.postgres.migrate import migration_files


class SchemaNotMigrated(Exception):
    """Migrations this version ships are not applied to the database."""


async def unapplied_migrations(pool: asyncpg.Pool) -> list[str]:
    """The names of the shipped migrations the database has not applied (all of them
    when it has no ``schema_migrations`` table: a database never migrated)."""
    async with pool.acquire() as conn:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = ({r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                if exists else set())
    return [name for version, name, _ in migration_files() if version not in done]


def schema_check(pool: asyncpg.Pool) -> Callable[[], Awaitable[None]]:
    """A readiness check: fails, naming the fix, while migrations are not applied. Once
    the schema is complete it stays so (a schema is never un-migrated under a running
    role), so the query stops."""
    migrated = False

    async def check() -> None:
        nonlocal migrated
        if migrated:
            return
        missing = await unapplied_migrations(pool)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise SchemaNotMigrated(f"the database is not migrated: run `jobsched migrate` "
                                    f"({missing[-1]}{more} not applied)")
        migrated = True

    return check


def startup_hint(exc: BaseException) -> str | None:
    """What to run when connecting fails for a reason only a person can fix."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "the database does not exist: create it with `jobsched migrate --create-db`"
    return None
