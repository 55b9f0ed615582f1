"""What a person must run when a role cannot use its database: said at start-up, so the
fix (``jobsched migrate --create-db``) is named instead of a bare connection error. A
database that exists but is migrated to another version is refused at start-up by
``migrate.check_schema``."""

from __future__ import annotations

import asyncpg


def startup_hint(exc: BaseException) -> str | None:
    """What to run when connecting fails for a reason only a person can fix."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "the database does not exist: create it with `jobsched migrate --create-db`"
    return None
