"""Leader election on a real ZooKeeper: one leader, epochs that grow, hand-over on resign,
and a term that ends when the session does."""

from __future__ import annotations

import asyncio

from jobsched.adapters.zookeeper import LeaderCampaign, ZooKeeperCoordinator, make_client
from jobsched.settings import Settings


async def test_one_leader_and_growing_epochs(settings: Settings) -> None:
    clients = [make_client(settings.zookeeper_hosts, settings.zookeeper_chroot, 4)
               for _ in range(3)]
    for client in clients:
        await client.start()
    campaigns = [LeaderCampaign(c, f"s{i}") for i, c in enumerate(clients)]
    try:
        elections = [asyncio.ensure_future(c.elected()) for c in campaigns]
        done, pending = await asyncio.wait(elections, timeout=5,
                                           return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.3)
        assert len(done) == 1 and all(not p.done() for p in pending)
        first = elections.index(done.pop())
        term = elections[first].result()
        seen = await ZooKeeperCoordinator(clients[0]).schedulers()
        assert [s.leader for s in seen] == [True, False, False] and len(seen) == 3
        assert seen[0].instance == f"s{first}"

        await campaigns[first].resign()
        done, pending = await asyncio.wait(pending, timeout=5,
                                           return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        second = elections.index(done.pop())
        term2 = elections[second].result()
        assert term2.epoch > term.epoch

        # The second leader's session ends: its term ends with it, the last one takes over.
        await clients[second].close()
        await asyncio.wait_for(term2.ended.wait(), 5)
        (last,) = pending
        term3 = await asyncio.wait_for(last, 10)
        assert term3.epoch > term2.epoch
    finally:
        for election in elections:
            election.cancel()
        for client in clients:
            try:
                await asyncio.wait_for(client.close(), 3)
            except Exception:  # noqa: BLE001 - already closed
                pass
