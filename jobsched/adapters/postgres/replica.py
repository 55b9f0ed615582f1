"""Read-only api queries routed to a read replica, with the primary as the answer of last
resort."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from jobsched.adapters.postgres.pool import CONNECTION_ERRORS
from jobsched.ports import JobRepository

log = logging.getLogger(__name__)

T = TypeVar("T")
#: What makes the replica rest: it is unreachable, or it cancelled the read because of a
#: conflict with what it replays. Any other error (a bad value, say) says nothing of its
#: health, and is asked of the primary without benching the replica.
REPLICA_TROUBLE: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS, asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.QueryCanceledError)


class ReplicaReads:
    """When the replica fails (down, in recovery conflict) the read goes to the primary,
    and the replica is left alone for ``rest_s``; a row the replica does not have yet
    (replication lag after a create) is looked up on the primary too."""

    def __init__(self, replica: JobRepository, primary: JobRepository,
                 rest_s: float = 5.0) -> None:
        self.replica = replica
        self.primary = primary
        self.rest_s = rest_s
        self._resting_until = 0.0
        self.served = {"replica": 0, "primary": 0}

    @property
    def healthy(self) -> bool:
        return asyncio.get_running_loop().time() >= self._resting_until

    async def read(self, query: Callable[[JobRepository], Awaitable[T]], *,
                   confirm_missing: bool = False) -> T:
        if self.healthy:
            try:
                found = await query(self.replica)
            except REPLICA_TROUBLE as exc:
                # The replica is down, restarting, or cancelled the read (a recovery
                # conflict): the primary answers, and the replica rests.
                self._resting_until = asyncio.get_running_loop().time() + self.rest_s
                log.warning("read replica failed (%r); reading from the primary for %.0fs",
                            exc, self.rest_s)
            except Exception as exc:  # noqa: BLE001 - not the replica's fault: no rest
                log.info("read on the replica failed (%r); asking the primary", exc)
            else:
                if not (confirm_missing and not found):
                    self.served["replica"] += 1
                    return found
        self.served["primary"] += 1
        return await query(self.primary)

    def describe(self) -> dict[str, Any]:
        return {"healthy": self.healthy, **{f"served_{k}": v for k, v in self.served.items()}}
