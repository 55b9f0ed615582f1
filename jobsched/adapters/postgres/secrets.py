"""Namespace secrets on PostgreSQL (``jobsched.ports.SecretRepository``): the api writes
and lists them, the worker reads the sealed values of its job's namespace, and
``jobsched secrets rotate-key`` reseals them. Values arrive sealed: this module never sees
a plaintext."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from jobsched.adapters.postgres.sql import load_queries
from jobsched.ports import Row, SealedSecret

Q = load_queries("secrets.sql")


class PostgresSecrets:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put_secret(self, namespace: str, name: str, sealed: bytes) -> tuple[Row, bool]:
        row = await Q.put_secret.fetchrow(self.pool, namespace=namespace, name=name,
                                          sealed=sealed)
        shown = {k: row[k] for k in ("name", "created_at", "updated_at")}
        return shown, bool(row["created"])

    async def list_secrets(self, namespace: str, *, after: str | None,
                           limit: int) -> list[Row]:
        rows = await Q.list_secrets.fetch(self.pool, namespace=namespace, after=after,
                                          limit=limit)
        return [dict(r) for r in rows]

    async def delete_secret(self, namespace: str, name: str) -> bool:
        return await Q.delete_secret.fetchrow(self.pool, namespace=namespace,
                                              name=name) is not None

    async def sealed_secrets(self, namespace: str, names: Sequence[str]) -> dict[str, bytes]:
        rows = await Q.sealed_secrets.fetch(self.pool, namespace=namespace, names=list(names))
        return {r["name"]: bytes(r["sealed"]) for r in rows}

    async def sealed_batch(self, after: tuple[str, str],
                           limit: int) -> list[SealedSecret]:
        rows = await Q.sealed_batch.fetch(self.pool, after_namespace=after[0],
                                          after_name=after[1], limit=limit)
        return [SealedSecret(r["namespace"], r["name"], bytes(r["sealed"])) for r in rows]

    async def reseal(self, secret: SealedSecret, new_sealed: bytes) -> bool:
        done = await Q.reseal_secret.execute(self.pool, namespace=secret.namespace,
                                             name=secret.name, old_sealed=secret.sealed,
                                             new_sealed=new_sealed)
        return done.endswith(" 1")
