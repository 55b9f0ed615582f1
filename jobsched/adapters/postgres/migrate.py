"""Numbered SQL migrations (``migrations/NNN_name.sql``), applied in order under an advisory
lock so that several processes starting at once migrate once; and the comparison of a
database's applied migrations with this code's, which every role makes before it starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

import asyncpg

from jobsched.settings import ConfigError

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6A6F6273  # "jobs": one advisory lock for every migrating process


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    folder = resources.files(__package__) / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(dsn: str, until: int | None = None) -> list[str]:
    """Apply pending numbered migrations under an advisory lock; returns the applied names.
    ``until``: apply none numbered above it (a test holding a database at an older schema)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done or (until is not None and version > until):
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(name)
                log.info("applied migration %s", name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What a database holds against what this code ships: ``pending`` are shipped and not
    applied (the database is behind), ``unknown`` are applied and not shipped (it was
    migrated by a newer jobsched). ``migrated`` is False when it was never migrated."""

    migrated: bool
    applied: dict[int, tuple[str, datetime | None]]
    available: list[tuple[int, str]]
    pending: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return self.migrated and not self.pending and not self.unknown


def compare_schema(applied: dict[int, tuple[str, datetime | None]] | None,
                   available: list[tuple[int, str]]) -> SchemaStatus:
    """``applied`` is None for a database without ``schema_migrations`` at all."""
    done = applied or {}
    shipped = {version for version, _ in available}
    return SchemaStatus(
        migrated=applied is not None, applied=done, available=available,
        pending=[name for version, name in available if version not in done],
        unknown=[name for version, (name, _) in sorted(done.items()) if version not in shipped])


async def read_schema(conn: asyncpg.Connection | asyncpg.Pool) -> SchemaStatus:
    """The database's migrations against this code's (read only: creates nothing)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = None
    if exists:
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations")
        applied = {r["version"]: (r["name"], r["applied_at"]) for r in rows}
    return compare_schema(applied, [(v, name) for v, name, _ in migration_files()])


async def schema_status(dsn: str) -> SchemaStatus:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await read_schema(conn)
    finally:
        await conn.close()


class SchemaMismatch(ConfigError):
    """The database's schema is not the one this code was written for: a role refuses to
    start rather than fail later on a missing table or column (or write what an older
    version of itself could not read)."""


def mismatch_message(status: SchemaStatus) -> str | None:
    """One line saying what is wrong and what to run; None when the schema is current."""
    if not status.migrated:
        return ("the database has no jobsched schema (it was never migrated): run "
                "`jobsched migrate` first (or start the role with --migrate)")
    if status.unknown:
        newest = max(v for v, _ in status.available) if status.available else 0
        return (f"the database schema is newer than this jobsched: it has migration(s) "
                f"{', '.join(status.unknown)} that this version does not know (it ships up "
                f"to {newest:03d}); run the jobsched version that applied them, or restore "
                "the database from before them (docs/operations.md, rollbacks)")
    if status.pending:
        return (f"the database schema is behind this jobsched: {len(status.pending)} "
                f"migration(s) not applied ({', '.join(status.pending)}); run "
                "`jobsched migrate` first (or start the role with --migrate)")
    return None


async def check_schema(pool: asyncpg.Pool) -> None:
    """Raise SchemaMismatch unless the database is migrated exactly as far as this code."""
    message = mismatch_message(await read_schema(pool))
    if message is not None:
        raise SchemaMismatch(message)
