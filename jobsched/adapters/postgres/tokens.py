"""API tokens on PostgreSQL (``jobsched.ports.TokenRepository``): only their SHA-256 digest
is stored (see jobsched.domain.auth)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from jobsched.adapters.postgres.sql import load_queries
from jobsched.ports import Row

Q = load_queries("tokens.sql")


class PostgresTokens:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, digest: bytes, hint: str, namespace: str, role: str,
                     name: str | None, expires_at: datetime | None) -> Row:
        row = await Q.insert_token.fetchrow(self.pool, digest=digest, hint=hint,
                                            namespace=namespace, role=role, name=name,
                                            expires_at=expires_at)
        return dict(row)

    async def authenticate(self, digest: bytes) -> Row | None:
        row = await Q.authenticate_token.fetchrow(self.pool, digest=digest)
        return dict(row) if row is not None else None

    async def list(self, namespace: str | None = None) -> list[Row]:
        return [dict(r) for r in await Q.list_tokens.fetch(self.pool, namespace=namespace)]

    async def revoke(self, token_id: uuid.UUID) -> Row | None:
        row = await Q.revoke_token.fetchrow(self.pool, id=token_id)
        return dict(row) if row is not None else None
