"""The leader on in-memory ports: a deposed leader writes and publishes nothing more and
steps down; the misfire policy of each job decides what a take-over after downtime
records; fires are published only after they are recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from jobsched.domain.firing import DueJob
from jobsched.domain.states import ExecutionState
from jobsched.metrics import Metrics
from jobsched.scheduler.leader import Scheduler
from jobsched.settings import Settings
from tests.unit.fakes import FakeBroker, FakeCampaign, FakeCoordinator, FakeLeaderStore

pytestmark = pytest.mark.timeout(20)


def _every_second(now: datetime, **policy: object) -> DueJob:
    return DueJob(uuid.uuid4(), "* * * * * *", "UTC", now, **policy)  # type: ignore[arg-type]


class Leading:
    def __init__(self, store: FakeLeaderStore, epochs: list[int]) -> None:
        self.store = store
        self.broker = FakeBroker()
        self.campaign = FakeCampaign(epochs)
        settings = Settings(instance="s1", scheduler_poll_s=0.05, scheduler_lookahead_s=0)
        self.scheduler = Scheduler(settings, store, self.broker,
                                   FakeCoordinator(self.campaign),
                                   Metrics("scheduler", "s1"))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.scheduler.run(self.stop))

    async def until(self, condition: object, timeout: float = 5) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():  # type: ignore[operator]
            assert asyncio.get_running_loop().time() < deadline, "condition never held"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def leading() -> AsyncIterator[Leading]:
    now = datetime.now(UTC)
    store = FakeLeaderStore([_every_second(now.replace(microsecond=0)) for _ in range(3)])
    leading = Leading(store, [7])
    await leading.start()
    yield leading
    await leading.close()


async def test_a_deposed_leader_writes_and_publishes_nothing_more(leading: Leading) -> None:
    store, scheduler = leading.store, leading.scheduler
    # Its fires recorded and published (publishing follows the commit: snapshotting in
    # between read 3 published after against 0 before, though nothing new was fired).
    await leading.until(lambda: scheduler.is_leader and len(store.fires) >= 3
                        and len(leading.broker.published) >= len(store.fires))
    assert {epoch for epoch, _ in store.fires} == {7}
    # Another scheduler wins a newer epoch (this one's ZooKeeper session is not yet known
    # to have ended): the fence refuses the next tick's writes.
    assert await store.claim_epoch(8, "s2")
    fires_before, published_before = len(store.fires), len(leading.broker.published)
    scheduler.wake.set()
    await leading.until(lambda: not scheduler.is_leader)
    assert store.stale_attempts >= 1
    assert leading.campaign.resigned >= 1  # it left the election to stand again
    await asyncio.sleep(0.3)  # several poll periods: nothing more comes from it
    assert len(store.fires) == fires_before
    # Published since: at most fires it recorded while it led, their commit racing the
    # fence (an outbox drained late is harmless: claims are idempotent).
    assert published_before <= len(leading.broker.published) <= fires_before
    assert all(epoch == 7 for epoch, _ in store.fires)


async def test_fires_are_published_after_they_are_recorded(leading: Leading) -> None:
    await leading.until(lambda: len(leading.store.published) >= 3)
    recorded = {(f.job_id, f.scheduled_for) for _, f in leading.store.fires}
    for message in leading.broker.published:
        assert any(job_id == message.job_id for job_id, _ in recorded)


@pytest.mark.parametrize(("misfire", "queued", "missed"), [
    ("run_once", 1, 0),   # 60 missed fires coalesce into one run
    ("run_all", 5, 1),    # max_catchup=5 runs, the other 55 recorded as one missed
    ("skip", 0, 1),       # the late ones recorded missed (those within 5 s run)
])
async def test_a_take_over_after_downtime_applies_each_jobs_misfire_policy(
        misfire: str, queued: int | None, missed: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    job = _every_second(now - timedelta(seconds=59), misfire=misfire, max_catchup=5)
    store = FakeLeaderStore([job])
    leading = Leading(store, [3])
    await leading.start()
    try:
        await leading.until(lambda: len(store.fires) >= (queued or 1) + missed)
        await asyncio.sleep(0.1)
        # Fires up to misfire_threshold_s (5 s) late are not misfires: they all run.
        recent = [f for _, f in store.fires if now - timedelta(seconds=5) <= f.scheduled_for]
        assert recent and all(f.state == ExecutionState.QUEUED for f in recent)
        first_tick = [f for _, f in store.fires if f.scheduled_for < now - timedelta(seconds=6)]
        states = [f.state for f in first_tick]
        assert states.count(ExecutionState.MISSED) == missed, first_tick
        if queued is not None:
            assert states.count(ExecutionState.QUEUED) == queued, first_tick
        if misfire == "run_once":
            assert "coalesced" in (first_tick[0].reason or "")
        if misfire == "skip":
            (late,) = [f for f in first_tick if f.state == ExecutionState.MISSED]
            assert "misfire=skip" in (late.reason or "")

        # the schedule moved on to its first fire after the take-over: never wedged
        assert store.jobs[job.id].next_fire_at > now - timedelta(seconds=1)
    finally:
        await leading.close()


async def test_each_retention_pass_is_timed_only_while_leading() -> None:
    from jobsched.scheduler.retention import run_retention

    store = FakeLeaderStore()
    await store.claim_epoch(4, "s1")
    metrics = Metrics("scheduler", "s1")
    epoch: list[int | None] = [None]
    stop = asyncio.Event()
    task = asyncio.create_task(run_retention(store, lambda: epoch[0], 30, 0.01, stop, metrics))

    def passes() -> float:
        try:
            return float(metrics.retention_duration.get({})["count"])
        except KeyError:  # never observed
            return 0.0

    try:
        await asyncio.sleep(0.05)
        assert passes() == 0  # a standby purges nothing, so times nothing
        epoch[0] = 4
        deadline = asyncio.get_running_loop().time() + 5
        while passes() < 2:
            assert asyncio.get_running_loop().time() < deadline, "no pass was timed"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
