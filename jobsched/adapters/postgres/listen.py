"""LISTEN/NOTIFY: the event-driven wake-ups of the leader (a job or retry is due) and of
the workers (an execution they run was cancelled; a webhook delivery was recorded)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from jobsched.adapters.postgres.pool import CONNECTION_ERRORS
from jobsched.backoff import Backoff, sleep_unless

log = logging.getLogger(__name__)

#: The leader's wake-up: a job was created or changed, a run triggered, a retry is due.
WAKE_CHANNEL = "jobsched_wake"
#: An execution was cancelled (job cancelled, replaced): its worker stops the run.
CANCEL_CHANNEL = "jobsched_cancel"
#: Webhook deliveries were written (an execution ended, a redelivery): workers send them.
#: The name is also in migration 010's triggers and webhook_enqueue().
WEBHOOK_CHANNEL = "jobsched_webhooks"
PROBE_INTERVAL_S = 5.0


class WakeListener:
    """A dedicated connection LISTENing on a channel; reconnects with capped backoff.
    ``on_wake`` gets the payload ("" after a reconnect, when anything may have been missed).
    """

    def __init__(self, dsn: str, on_wake: Callable[[str], None],
                 channel: str = WAKE_CHANNEL) -> None:
        self.dsn = dsn
        self.on_wake = on_wake
        self.channel = channel

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.1, 5.0)
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(self.channel, self._notified)
                backoff.reset()
                self.on_wake("")  # anything missed while disconnected is picked up now
                while not stop.is_set() and not conn.is_closed():
                    await sleep_unless(stop, PROBE_INTERVAL_S)
                    if not stop.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("wake listener lost its connection: %r", exc)
                await backoff.wait(stop)
            finally:
                if conn is not None:
                    await _close_quietly(conn.close())

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_wake(payload)


async def _close_quietly(closing: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(closing, 2)
    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
        pass
