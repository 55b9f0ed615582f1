"""The PostgreSQL adapter (asyncpg), one module per user of the database: ``jobs`` (the
api), ``leader`` (the scheduler leader, fenced), ``worker`` (claims and results),
``tokens``, ``listen`` (LISTEN/NOTIFY wake-ups), ``replica`` (reads on a standby); and
``pool`` and ``migrate`` which they all share. SQL lives in the ``.sql`` files beside
them, one named block per statement (``sql.py``)."""

from jobsched.adapters.postgres.migrate import SchemaMismatch, check_schema, migrate, schema_status
from jobsched.adapters.postgres.pool import (
    CONNECTION_ERRORS,
    DATABASE_ERRORS,
    create_database,
    create_pool,
)

__all__ = ["CONNECTION_ERRORS", "DATABASE_ERRORS", "SchemaMismatch", "check_schema",
           "create_database", "create_pool", "migrate", "schema_status"]
