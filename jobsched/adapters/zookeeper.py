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
from aiozk.protocol import WatchEvent
from aiozk.recipes.election import LeaderElection
from aiozk.states import States

log = logging.getLogger(__name__)

# aiozk logs full tracebacks at ERROR on ordinary reconnects.
logging.getLogger("aiozk").setLevel(logging.CRITICAL)

ELECTION_PATH = "/election"
WORKERS_PATH = "/workers"  # an ephemeral znode per live worker


def make_client(hosts: str, chroot: str, session_timeout_s: float) -> aiozk.ZKClient:
    return aiozk.ZKClient(
        hosts,
        chroot=chroot,
        session_timeout=session_timeout_s,
        # A request retried while ZooKeeper is unreachable waits for the session to be
        # connected again anyway: the cap only delays it once it is, so keep it short.
        retry_policy=aiozk.RetryPolicy.exponential_backoff(base=2, maximum=1),
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


class StaleCandidacy(Exception):
    """Our election znode belongs to an earlier session of this client (it will vanish
    when that session expires): it was deleted, and the campaign must start over."""


class LeaderCampaign:
    """Stand in the election until elected; then hold a term until the session falters.

    aiozk does not re-register DELETED watches after a reconnect, so a standby that was
    disconnected while its predecessor went away would wait forever on the watch alone:
    the wait re-checks the candidates every ``POLL_S`` seconds and after every session
    state change. A znode this client could not delete (ZooKeeper unreachable when the
    term ended) is deleted before the next candidacy: left alone, it would stay first in
    line as long as this process keeps its session, and nobody would lead.
    """

    POLL_S = 1.0

    def __init__(self, client: aiozk.ZKClient, instance: str) -> None:
        self.client = client
        self.instance = instance
        self._election: LeaderElection | None = None
        self._watch: asyncio.Task[None] | None = None
        self._orphans: set[str] = set()

    async def elected(self) -> LeaderTerm:
        """Join the election and wait for leadership; raises on ZooKeeper errors."""
        await self.client.session.state.wait_for(States.CONNECTED)
        await self._delete_orphans()
        election = LeaderElection(ELECTION_PATH)
        election.set_client(self.client)
        self._election = election
        await election.create_unique_znode(election.LABEL, data=self.instance.encode())
        path = election.owned_paths[election.LABEL]
        while True:
            session = self.client.session.session_id
            owned, siblings = await election.analyze_siblings()
            position = owned.get(election.LABEL)
            if position is None:
                raise zk_exc.NoNode()  # our znode went with an expired session
            _, stat = await self.client.get(path)
            if stat.ephemeral_owner != session or session != self.client.session.session_id:
                await self._delete(path)
                raise StaleCandidacy(path)
            if position == 0:
                break
            await self._wait_for_change(election.sibling_path(siblings[position - 1]))
        term = LeaderTerm(epoch=election.sequence_number(path))
        self._watch = asyncio.create_task(self._end_term_when_session_falters(term, session))
        return term

    async def _wait_for_change(self, predecessor: str) -> None:
        """Until the predecessor's znode is deleted, the session falters, or POLL_S."""
        changed = asyncio.get_running_loop().create_future()

        def deleted(_path: str) -> None:
            if not changed.done():
                changed.set_result(None)

        key = self.client.normalize_path(predecessor)
        self.client.session.add_watch_callback(WatchEvent.DELETED, key, deleted)
        faltered = self.client.session.state.wait_for(States.SUSPENDED, States.LOST)
        try:
            if await self.client.exists(predecessor, watch=True):
                await asyncio.wait([changed, faltered], timeout=self.POLL_S,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.client.session.remove_watch_callback(WatchEvent.DELETED, key, deleted)
            changed.cancel()

    async def _end_term_when_session_falters(self, term: LeaderTerm, session: int) -> None:
        if self.client.session.session_id == session:
            await self.client.session.state.wait_for(States.SUSPENDED, States.LOST)
        log.warning("ZooKeeper session faltered: leadership term %d ends", term.epoch)
        term.ended.set()

    async def _delete(self, path: str) -> bool:
        try:
            await asyncio.wait_for(self.client.delete(path), timeout=3)
        except zk_exc.NoNode:
            pass
        except (TimeoutError, zk_exc.ZKError, OSError) as exc:
            log.info("could not delete election znode %s (%r); retrying later", path, exc)
            self._orphans.add(path)
            return False
        self._orphans.discard(path)
        return True

    async def _delete_orphans(self) -> None:
        for path in list(self._orphans):
            if await self._delete(path):
                log.info("deleted election znode %s left by an earlier term", path)

    async def resign(self) -> None:
        """Leave the election (deleting our znode now, or before the next candidacy)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        election, self._election = self._election, None
        if election is None:
            return
        if election.watch_loop_task is not None:
            election.watch_loop_task.cancel()
        path = election.owned_paths.get(election.LABEL)
        if path is not None:
            await self._delete(path)

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
