"""ZooKeeper adapter (aiozk): the session, and leader election as a lease with an epoch.

aiozk keeps ``has_leadership`` true after its session expired and was silently replaced
(see SERVICES.md), so leadership here is tied to the session state instead: the term ends
the moment the session is SUSPENDED or LOST, and the epoch fences whatever was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import aiozk
from aiozk import exc as zk_exc
from aiozk.recipes.election import LeaderElection
from aiozk.states import States

log = logging.getLogger(__name__)

# aiozk logs full tracebacks at ERROR on ordinary reconnects.
logging.getLogger("aiozk").setLevel(logging.CRITICAL)

ELECTION_PATH = "/election"


def make_client(hosts: str, chroot: str, session_timeout_s: float) -> aiozk.ZKClient:
    return aiozk.ZKClient(
        hosts,
        chroot=chroot,
        session_timeout=session_timeout_s,
        retry_policy=aiozk.RetryPolicy.exponential_backoff(base=2, maximum=5),
        read_timeout=session_timeout_s,
    )


async def start_client(client: aiozk.ZKClient, stop: asyncio.Event) -> bool:
    """Start the session, retrying with capped backoff; False if stopped first."""
    delay = 0.2
    while not stop.is_set():
        try:
            await asyncio.wait_for(client.start(), timeout=10)
            return True
        except (TimeoutError, OSError, zk_exc.ZKError) as exc:
            log.warning("ZooKeeper not reachable (%r); retrying in %.1fs", exc, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
    return False


@dataclass
class LeaderTerm:
    """One uninterrupted leadership: its epoch and an event set when it ends."""

    epoch: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class LeaderCampaign:
    """Stand in the election until elected; then hold a term until the session falters."""

    def __init__(self, client: aiozk.ZKClient, instance: str) -> None:
        self.client = client
        self.instance = instance
        self._election: LeaderElection | None = None
        self._watch: asyncio.Task[None] | None = None

    async def elected(self) -> LeaderTerm:
        """Join the election and wait for leadership; raises on ZooKeeper errors."""
        await self.client.session.state.wait_for(States.CONNECTED)
        election = LeaderElection(ELECTION_PATH)
        election.set_client(self.client)
        self._election = election
        await election.create_unique_znode(election.LABEL, data=self.instance.encode())
        election.watch_loop_task = asyncio.create_task(election.watch_loop())
        waiting = asyncio.ensure_future(election.wait_for_leadership())
        done, _ = await asyncio.wait(
            {waiting, election.watch_loop_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            waiting.cancel()
            error = election.watch_loop_task.exception()
            raise error or zk_exc.NoNode()
        path = election.owned_paths[election.LABEL]
        term = LeaderTerm(epoch=election.sequence_number(path))
        self._watch = asyncio.create_task(self._end_term_when_session_falters(term))
        return term

    async def _end_term_when_session_falters(self, term: LeaderTerm) -> None:
        await self.client.session.state.wait_for(States.SUSPENDED, States.LOST)
        log.warning("ZooKeeper session faltered: leadership term %d ends", term.epoch)
        term.ended.set()

    async def resign(self) -> None:
        """Leave the election (deleting our znode if the session still allows it)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        election, self._election = self._election, None
        if election is None:
            return
        try:
            await asyncio.wait_for(election.resign(), timeout=3)
        except (TimeoutError, zk_exc.ZKError, KeyError, OSError) as exc:
            # The znode is ephemeral: if we cannot delete it, the session's end will.
            log.info("resign could not delete the election znode: %r", exc)

    async def candidates(self) -> list[tuple[int, str]]:
        """(sequence, instance) of every scheduler in the election, leader first."""
        children = await self.client.get_children(ELECTION_PATH)
        found = []
        for child in children:
            try:
                data = await self.client.get_data(f"{ELECTION_PATH}/{child}")
            except zk_exc.NoNode:
                continue
            found.append((int(child[-10:]), (data or b"").decode(errors="replace")))
        return sorted(found)
