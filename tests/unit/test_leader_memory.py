"""The leader keeps nothing per fire (issue 21, item 4): after a warm-up, 20,000 more
fires through the real fire loop, plan_tick, the publisher and the metrics leave its
traced memory where it was (both read with nothing in flight). The ports are in-memory
and keep nothing either, so any growth is the leader's own (a map of ids, a set of tasks,
a label per job...)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from jobsched.domain.firing import DueJob, FireRecord, TickPlan
from jobsched.domain.states import ExecutionState
from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.ports import Dispatch
from jobsched.scheduler.leader import Scheduler
from jobsched.settings import Settings
from tests.unit.fakes import FakeBroker, FakeCampaign, FakeCoordinator, FakeLeaderStore

pytestmark = pytest.mark.timeout(120)

JOBS = 200  # every-second jobs, all due at every call: a batch is always full
WARM_UP_FIRES = 6_000
MEASURED_FIRES = 20_000
#: What may differ between two quiet readings whatever the fire count (free lists, a
#: cache entry, a timer): a leak of one small object per fire is 20,000 x ~50 bytes.
ALLOWANCE = 64 * 1024


class EndlessDue(FakeLeaderStore):
    """Every call finds all the jobs due this second, records nothing and forgets what it
    published; every tenth call comes up short, so the leader also ends its ticks."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = [uuid.uuid4() for _ in range(JOBS)]
        self.calls = 0
        self.marked = 0
        self.paused = False

    async def fire_due_jobs(self, epoch: int, now: datetime, limit: int,
                            plan: Callable[[list[DueJob]], TickPlan],
                            horizon: datetime | None = None,
                            ) -> tuple[list[Dispatch], int, list[FireRecord]]:
        self._fence(epoch)
        if self.paused:
            return [], 0, []
        self.calls += 1
        second = now.replace(microsecond=0)
        tick = plan([DueJob(job_id, "* * * * * *", "UTC", second) for job_id in self.ids])
        dispatches = [Dispatch(uuid.uuid4(), f.job_id, 1, f.scheduled_for, "python",
                               fresh=True)
                      for f in tick.fires if f.state == ExecutionState.QUEUED]
        not_run = [f for f in tick.fires if f.state != ExecutionState.QUEUED]
        return dispatches, (limit if self.calls % 10 else 0), not_run

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        self.marked += len(execution_ids)  # a count only: a list would be the leak itself

    async def next_wake(self, lookahead_s: float = 0.0) -> datetime | None:
        return datetime.now(UTC)


class ForgetfulBroker(FakeBroker):
    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        for message in messages:
            message.encode()
        return [True] * len(messages)


async def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def _fire_then_read(scheduler: Scheduler, store: EndlessDue, fires: int) -> int:
    """Fire until ``fires`` in all, then stop firing, let every publish finish and read the
    traced memory."""
    store.paused = False
    await _until(lambda: scheduler.fired >= fires)
    store.paused = True
    publisher = scheduler.publisher
    assert publisher is not None
    await _until(lambda: not publisher.backlog and not publisher._sending
                 and not publisher._unmarked)
    await asyncio.sleep(0.05)  # the tick under way ends
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.fixture
def tracing() -> object:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(1)
    yield
    if started:
        tracemalloc.stop()


async def test_the_leader_keeps_nothing_per_fire(tracing: object) -> None:
    settings = Settings(instance="s1", scheduler_batch_size=JOBS, scheduler_poll_s=0.01,
                        scheduler_lookahead_s=0, publish_mark_delay_s=0.05)
    store = EndlessDue()
    scheduler = Scheduler(settings, store, ForgetfulBroker(),
                          FakeCoordinator(FakeCampaign([1])), Metrics("scheduler", "s1"))
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        before = await _fire_then_read(scheduler, store, WARM_UP_FIRES)
        fired_before = scheduler.fired
        after = await _fire_then_read(scheduler, store, fired_before + MEASURED_FIRES)
        grown, fired = after - before, scheduler.fired - fired_before
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert store.calls > 10 and scheduler.is_leader is False
    # every fire went all the way through: published, confirmed and marked (a publish path
    # that fails keeps its own garbage, and the figure below would not be the leader's)
    assert store.marked == scheduler.fired, (store.marked, scheduler.fired)
    assert grown < ALLOWANCE, \
        f"{grown:,} bytes more after {fired:,} fires ({grown / fired:.1f} per fire)"
