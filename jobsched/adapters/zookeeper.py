"""ZooKeeper adapter (aiozk): the session, leader election as a lease with an epoch, per-job
locks and the live worker registry. Implements ``jobsched.ports.Coordinator``.

Measured with aiozk 0.32 (docs/design-notes.md): after its session EXPIRES and is silently
replaced, aiozk keeps ``has_leadership`` true although the election znode is gone, a split
brain. So leadership here is tied to the session state instead: the term ends the moment
the session is SUSPENDED or LOST, and the epoch fences whatever was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import aiozk
import orjson
from aiozk import exc as zk_exc
from aiozk.protocol import WatchEvent
from aiozk.recipes.election import LeaderElection
from aiozk.recipes.lock import Lock
from aiozk.states import States

from jobsched.backoff import Backoff
from jobsched.ports import CandidacyLost, LeaderTerm, SchedulerInfo, WorkerInfo

log = logging.getLogger(__name__)

# aiozk logs full tracebacks at ERROR on ordinary reconnects.
logging.getLogger("aiozk").setLevel(logging.CRITICAL)

ELECTION_PATH = "/election"
WORKERS_PATH = "/workers"  # an ephemeral znode per live worker
LOCKS_PATH = "/locks"  # a lock per job of concurrency forbid/replace
REGISTRY_REFRESH_S = 2.0
ZK_ERRORS = (TimeoutError, zk_exc.ZKError, OSError)


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
    """Start the session, retrying with capped backoff; False if stopped first. Logs the
    session timeout the server granted: it bounds a leader take-over, and a server whose
    tickTime is too long for the requested timeout grants more (at least twice its tickTime)."""
    backoff = Backoff()
    requested = client.session.timeout
    while not stop.is_set():
        try:
            await asyncio.wait_for(client.start(), timeout=10)
        except ZK_ERRORS as exc:
            log.warning("ZooKeeper not reachable (%r); retrying", exc)
            await backoff.wait(stop)
            continue
        granted = client.session.timeout
        if granted > requested:
            log.warning("ZooKeeper granted a %.1fs session for the %.1fs requested: a dead "
                        "leader is replaced that much later (set the ensemble's tickTime to "
                        "at most half the requested timeout; docs/deploy.md)", granted,
                        requested)
        else:
            log.info("ZooKeeper session of %.1fs", granted)
        return True
    return False


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
                raise CandidacyLost(path)  # our znode went with an expired session
            _, stat = await self.client.get(path)
            if stat.ephemeral_owner != session or session != self.client.session.session_id:
                await self._delete(path)
                raise CandidacyLost(path)
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
        except ZK_ERRORS as exc:
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


class ZooKeeperJobLock:
    def __init__(self, lock: Lock) -> None:
        self._lock = lock

    async def release(self) -> None:
        try:
            await asyncio.wait_for(self._lock.release(), 5)
        except Exception as exc:  # noqa: BLE001 - the lock is ephemeral: the session frees it
            log.warning("releasing a job lock failed (%r)", exc)


class ZooKeeperCoordinator:
    def __init__(self, client: aiozk.ZKClient) -> None:
        self.client = client

    def campaign(self, instance: str) -> LeaderCampaign:
        return LeaderCampaign(self.client, instance)

    async def acquire_job_lock(self, job_id: uuid.UUID,
                               timeout_s: float) -> ZooKeeperJobLock | None:
        """forbid/replace jobs run under a lock per job, released when the run ends or, if
        the worker dies, when its session does. A Lock object cannot be acquired twice at
        once, so each acquisition has its own."""
        lock = Lock(f"{LOCKS_PATH}/{job_id}")
        lock.set_client(self.client)
        try:
            await lock.acquire(timeout=timeout_s)
        except (TimeoutError, zk_exc.TimeoutError, zk_exc.ZKError):
            return None
        return ZooKeeperJobLock(lock)

    async def stay_registered(self, instance: str, describe: Callable[[], bytes],
                              changed: Callable[[], bool], until: asyncio.Event) -> None:
        """An ephemeral znode for this worker (the cluster view lists them), re-created
        after a session loss and refreshed when ``changed()``, until ``until`` is set."""
        path = f"{WORKERS_PATH}/{instance}"
        while not until.is_set():
            try:
                await self.client.session.state.wait_for(States.CONNECTED)
                await self.client.ensure_path(WORKERS_PATH)
                try:
                    await self.client.create(path, data=describe(), ephemeral=True)
                except zk_exc.NodeExists:
                    pass
                lost = self.client.session.state.wait_for(States.LOST)
                while not lost.done() and not until.is_set():
                    await asyncio.wait([lost], timeout=REGISTRY_REFRESH_S)
                    if changed() and not lost.done():
                        await self.client.set_data(path, describe(), force=True)
            except ZK_ERRORS as exc:
                log.warning("worker registration failed (%r); retrying", exc)
                await asyncio.sleep(1)

    async def _children(self, path: str) -> list[tuple[str, bytes]]:
        try:
            names = await self.client.get_children(path)
        except zk_exc.NoNode:
            return []
        found = []
        for name in names:
            try:
                found.append((name, await self.client.get_data(f"{path}/{name}") or b""))
            except zk_exc.NoNode:
                continue
        return found

    async def schedulers(self) -> list[SchedulerInfo]:
        """Every scheduler in the election, leader (lowest sequence) first."""
        children = sorted(await self._children(ELECTION_PATH), key=lambda c: c[0][-10:])
        return [SchedulerInfo(data.decode(errors="replace"), int(name[-10:]), i == 0)
                for i, (name, data) in enumerate(children)]

    async def workers(self) -> list[WorkerInfo]:
        workers = []
        for name, data in await self._children(WORKERS_PATH):
            try:
                info = orjson.loads(data) if data else {}
            except orjson.JSONDecodeError:
                info = {}
            workers.append(WorkerInfo(name, info.get("inflight", 0), info.get("prefetch")))
        return sorted(workers, key=lambda w: w.instance)

    async def check(self) -> str:
        current = self.client.session.state.current_state
        if current not in (States.CONNECTED, States.READ_ONLY):
            raise ConnectionError(f"ZooKeeper session {current}")
        return str(current)
