"""Webhooks on PostgreSQL: the api's endpoints and delivery log
(``jobsched.ports.WebhookRepository``) and the delivering workers' leases and results
(``jobsched.ports.WebhookDeliveryStore``). The deliveries themselves are written by the
triggers of migration 010, in the transaction that ends an execution (the outbox)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from jobsched.adapters.postgres.listen import WEBHOOK_CHANNEL
from jobsched.adapters.postgres.sql import load_queries
from jobsched.ports import DeliveryResult, DueDelivery, EndpointColumns, Row

Q = load_queries("webhooks.sql")

#: Why an endpoint was disabled by a 410 (shown on the endpoint).
GONE_REASON = "the receiver answered 410 Gone"


def _row(record: Any) -> Row | None:
    return dict(record) if record is not None else None


def _columns(columns: EndpointColumns) -> dict[str, Any]:
    return {f.name: getattr(columns, f.name) for f in dataclasses.fields(columns)}


#: The delivering workers' connections commit without waiting for the WAL flush: a claim
#: or a result lost to a crash of PostgreSQL only means the delivery is sent again, which
#: at-least-once allows; and each claim and each batch of results would otherwise wait
#: for an fsync (the outbox row itself is written by the ending transaction, with the
#: durability of the execution's own commit). And they never scan a table whole: each of
#: their statements reads deliveries through an index (due, or the primary key), but the
#: generic plan of a prepared statement is made once, early, while webhook_deliveries is
#: small (and without statistics where autovacuum is off or has not come by); it then
#: scanned the whole table on every claim and every batch of results as it grew (bench
#: webhooks: most of PostgreSQL's CPU per delivery).
DELIVERY_SESSION = {"synchronous_commit": "off", "enable_seqscan": "off"}


class PostgresWebhooks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- the api ---------------------------------------------------------------------

    async def create_endpoint(self, namespace: str, columns: EndpointColumns,
                              secret: bytes) -> Row:
        row = await Q.insert_endpoint.fetchrow(self.pool, namespace=namespace, secret=secret,
                                               **_columns(columns))
        return dict(row)

    async def list_endpoints(self, namespace: str, *,
                             after: tuple[datetime, uuid.UUID] | None,
                             limit: int) -> list[Row]:
        after_at, after_id = after if after else (None, None)
        rows = await Q.list_endpoints.fetch(self.pool, namespace=namespace, after_at=after_at,
                                            after_id=after_id, limit=limit)
        return [dict(r) for r in rows]

    async def get_endpoint(self, endpoint_id: uuid.UUID, namespace: str) -> Row | None:
        return _row(await Q.get_endpoint.fetchrow(self.pool, id=endpoint_id,
                                                  namespace=namespace))

    async def update_endpoint(self, endpoint_id: uuid.UUID, namespace: str,
                              change: Callable[[Row], EndpointColumns]) -> Row | None:
        """Read-modify-write one endpoint under its row lock; ``change`` returns the new
        columns (or raises to abort). Disabling parks its undelivered deliveries, enabling
        makes them due at once."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.lock_endpoint.fetchrow(conn, id=endpoint_id, namespace=namespace)
            if row is None:
                return None
            columns = change(dict(row))
            updated = await Q.update_endpoint.fetchrow(conn, id=endpoint_id,
                                                       **_columns(columns))
            if row["enabled"] and not columns.enabled:
                await Q.park_deliveries.execute(conn, endpoint_id=endpoint_id)
            elif columns.enabled and not row["enabled"]:
                await Q.unpark_deliveries.fetchrow(conn, endpoint_id=endpoint_id,
                                                   channel=WEBHOOK_CHANNEL)
        return _row(updated)

    async def delete_endpoint(self, endpoint_id: uuid.UUID, namespace: str) -> bool:
        return bool(await Q.delete_endpoint.fetchval(self.pool, id=endpoint_id,
                                                     namespace=namespace))

    async def rotate_secret(self, endpoint_id: uuid.UUID, namespace: str, secret: bytes,
                            overlap_s: float) -> Row | None:
        return _row(await Q.rotate_secret.fetchrow(self.pool, id=endpoint_id,
                                                   namespace=namespace, secret=secret,
                                                   overlap_s=overlap_s))

    async def list_deliveries(self, endpoint_id: uuid.UUID, *, state: str | None,
                              after: tuple[datetime, uuid.UUID] | None,
                              limit: int) -> list[Row]:
        # Event ids are time-ordered: the cursor's id alone places it.
        rows = await Q.list_deliveries.fetch(self.pool, endpoint_id=endpoint_id, state=state,
                                             after_id=after[1] if after else None,
                                             limit=limit)
        return [dict(r) for r in rows]

    async def redeliver(self, endpoint_id: uuid.UUID, event_id: uuid.UUID) -> Row | None:
        """The delivery queued again now, or None if there is none or its endpoint is
        disabled."""
        return _row(await Q.redeliver.fetchrow(self.pool, endpoint_id=endpoint_id,
                                               event_id=event_id, channel=WEBHOOK_CHANNEL))

    async def get_delivery(self, endpoint_id: uuid.UUID, event_id: uuid.UUID) -> Row | None:
        return _row(await Q.get_delivery.fetchrow(self.pool, endpoint_id=endpoint_id,
                                                  event_id=event_id))

    # --- the delivering workers ------------------------------------------------------

    async def claim_deliveries(self, worker: str, lease_s: float, *, limit: int,
                               per_endpoint: int,
                               free: Mapping[uuid.UUID, int]) -> list[DueDelivery]:
        ids = sorted(free)
        rows = await Q.claim_deliveries.fetch(
            self.pool, worker=worker, lease_s=lease_s, limit=limit, per_endpoint=per_endpoint,
            free_ids=ids, free=[free[i] for i in ids])
        return [DueDelivery(**dict(r)) for r in rows]

    async def record_attempts(self, results: Sequence[DeliveryResult], worker: str) -> int:
        # Rows locked in key order: two workers' batches never deadlock.
        results = sorted(results, key=lambda r: (r.endpoint_id, r.event_id))
        gone = sorted({r.endpoint_id for r in results if r.gone})
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await Q.record_attempts.fetch(
                conn, worker=worker,
                endpoint_ids=[r.endpoint_id for r in results],
                event_ids=[r.event_id for r in results],
                attempts=[r.attempt for r in results],
                states=[r.state for r in results],
                next_attempt_at=[r.next_attempt_at for r in results],
                statuses=[r.status for r in results],
                errors=[r.error for r in results],
                answers=[r.answer for r in results],
                durations_ms=[r.duration_ms for r in results],
                gone=[r.gone for r in results],
            )
            if gone:
                await Q.disable_endpoints.execute(conn, ids=gone, reason=GONE_REASON)
        return len(rows)

    async def oldest_pending(self) -> datetime | None:
        value: datetime | None = await Q.oldest_pending.fetchval(self.pool)
        return value
