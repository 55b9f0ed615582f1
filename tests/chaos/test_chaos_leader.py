"""Scenarios 1 and 2: the scheduler leader killed over and over, and paused past its
ZooKeeper session. Exactly one execution per fire, no fire lost, and no resumed leader
writing anything."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import asyncpg
import pytest

from tests.chaos.conftest import SESSION_TIMEOUT_S, ZOOKEEPER_TICK_MS, Chaos
from tests.chaos.harness import (
    assert_no_missed_fire,
    assert_one_execution_per_fire,
    assert_ran_once_per_fire,
    cron_every_second,
    record,
    summary,
    wait_terminal,
)

STORM_S = 60.0  # at most: it ends at the KILLS-th take-over
KILLS = 8
JOBS = 100


@pytest.mark.timeout(200)
async def test_leader_kill9_storm(chaos: Chaos) -> None:
    """Scenario 1: kill -9 the leader every few seconds, 8 times (within 60 s), while 100
    jobs fire every second; each killed scheduler comes straight back as a standby."""
    jobs = await chaos.create([cron_every_second(f"storm-{i}") for i in range(JOBS)])
    _, epoch = await chaos.leader()
    await asyncio.sleep(3)
    takeovers: list[float] = []
    elections: list[float] = []
    ends = time.monotonic() + STORM_S
    while time.monotonic() < ends - 4 and len(takeovers) < KILLS:
        leader, epoch = await chaos.leader(newer_than=epoch - 1)
        await asyncio.sleep(random.uniform(1.5, 3.5))
        old_epoch = epoch
        killed_at = time.time()
        leader.kill()
        leader.start()  # back at once, as a standby
        _, epoch = await chaos.leader(newer_than=old_epoch)
        elections.append(time.time() - killed_at)
        takeovers.append(await chaos.first_fire_of_epoch_above(old_epoch) - killed_at)
    await asyncio.sleep(2)
    await chaos.stop_jobs()

    fires = await wait_terminal(chaos.database_url, jobs, timeout=60)
    assert_one_execution_per_fire(fires)
    coalesced = assert_no_missed_fire(fires)
    completed = assert_ran_once_per_fire(chaos.runlog.read(jobs))
    states = {f.state for f in fires}
    assert states == {"succeeded"}, states
    assert len(completed) == len(fires)
    record("leader_kill9_storm", zookeeper_tick_ms=ZOOKEEPER_TICK_MS, kills=len(takeovers),
           executions=len(fires),
           coalesced_fires=coalesced, takeover_s=summary(takeovers),
           leader_reported_s=summary(elections),
           epochs=len({f.epoch for f in fires}))
    assert len(takeovers) >= KILLS
    # Every gap: from the kill to the new leader's first fire. The dead leader's session
    # ends within one tick after its timeout; half a second more to claim and fire.
    assert max(takeovers) <= SESSION_TIMEOUT_S + ZOOKEEPER_TICK_MS / 1000 + 0.5, takeovers


@pytest.mark.timeout(120)
async def test_paused_leader_is_fenced(chaos: Chaos) -> None:
    """Scenario 2: SIGSTOP the leader longer than its session timeout; a standby takes
    over; after SIGCONT the old leader writes nothing."""
    jobs = await chaos.create([cron_every_second(f"pause-{i}") for i in range(20)])
    leader, old_epoch = await chaos.leader()
    await asyncio.sleep(2.5)
    paused_at = time.time()
    leader.pause()
    try:
        _, new_epoch = await chaos.leader(newer_than=old_epoch, skip=[leader])
        takeover = await chaos.first_fire_of_epoch_above(old_epoch) - paused_at
        await asyncio.sleep(2)
    finally:
        leader.resume()
    resumed_at = time.time()
    await asyncio.sleep(SESSION_TIMEOUT_S + 2)
    report = await chaos.readyz(leader, 2)
    assert report is not None, "the resumed scheduler does not answer"
    assert report["scheduler"]["leader"] is False or report["scheduler"]["epoch"] > new_epoch
    await chaos.stop_jobs()

    fires = await wait_terminal(chaos.database_url, jobs, timeout=30)
    assert_one_execution_per_fire(fires)
    assert_no_missed_fire(fires)
    assert_ran_once_per_fire(chaos.runlog.read(jobs))
    # Fencing: every fire that fell due after the pause was written by a newer leader.
    late = [f for f in fires
            if f.epoch == old_epoch and f.scheduled_for.timestamp() > paused_at + 1]
    assert not late, late[:3]
    log = leader.log_tail(20_000)
    record("paused_leader", takeover_s=round(takeover, 2),
           paused_s=round(resumed_at - paused_at, 2), deposed_by_fence="deposed" in log,
           session_faltered="faltered" in log)


@pytest.mark.timeout(120)
async def test_takeover_while_paused_leader_holds_the_fence(chaos: Chaos) -> None:
    """Scenario 2, worst timing: the leader freezes inside a fenced transaction (it holds
    the leader row FOR SHARE). The standby's claim must not wait for it to thaw."""
    jobs = await chaos.create([cron_every_second(f"frozen-{i}") for i in range(10)])
    leader, old_epoch = await chaos.leader()
    await asyncio.sleep(1.5)
    # What a leader frozen mid-transaction leaves behind: an open transaction that read
    # the fence FOR SHARE, on a connection that stays open.
    frozen = await asyncpg.connect(chaos.database_url)
    transaction = frozen.transaction()
    await transaction.start()
    await frozen.fetchval("SELECT epoch FROM leader WHERE id = 1 FOR SHARE")
    paused_at = time.time()
    leader.pause()
    try:
        await chaos.leader(newer_than=old_epoch, skip=[leader], timeout=30)
        takeover = await chaos.first_fire_of_epoch_above(old_epoch, timeout=30) - paused_at
    finally:
        leader.resume()
        try:
            await transaction.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the new leader ended that session, as it should
        await frozen.close()
    await asyncio.sleep(1)
    await chaos.stop_jobs()
    fires = await wait_terminal(chaos.database_url, jobs, timeout=30)
    assert_one_execution_per_fire(fires)
    assert_no_missed_fire(fires)
    record("frozen_in_transaction", takeover_s=round(takeover, 2))
    assert takeover <= SESSION_TIMEOUT_S + 2, takeover


@pytest.mark.timeout(90)
async def test_sigterm_leader_hands_over_within_a_second(chaos: Chaos) -> None:
    """SIGTERM makes the leader resign: a standby leads in under a second, and no fire is
    lost or doubled."""
    jobs = await chaos.create([cron_every_second(f"resign-{i}") for i in range(20)])
    leader, old_epoch = await chaos.leader()
    await asyncio.sleep(2.5)
    stopped_at = time.time()
    leader.signal(signal.SIGTERM)
    await chaos.leader(newer_than=old_epoch, skip=[leader], timeout=10)
    handed_over = time.time() - stopped_at
    first_fire = await chaos.first_fire_of_epoch_above(old_epoch) - stopped_at
    assert await asyncio.to_thread(leader.process.wait, 30) == 0  # type: ignore[union-attr]
    leader.start()
    await asyncio.sleep(2)
    await chaos.stop_jobs()
    fires = await wait_terminal(chaos.database_url, jobs, timeout=30)
    assert_one_execution_per_fire(fires)
    assert_no_missed_fire(fires)
    assert_ran_once_per_fire(chaos.runlog.read(jobs))
    record("sigterm_leader", new_leader_after_s=round(handed_over, 2),
           first_fire_after_s=round(first_fire, 2))
    assert handed_over < 1.0, handed_over
