"""A message of several attempts (issue 18), on in-memory ports: each attempt runs as if it
came alone, and the message is settled once, after every attempt in it is: acked when all
are recorded, requeued whole when one was handed back unrun, with a dead attempt copied
alone to the dead-letter queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from jobsched.domain.priority import Priority
from jobsched.domain.states import ExecutionState
from jobsched.messages import AttemptMessage, MessageError
from jobsched.metrics import Metrics
from jobsched.settings import Settings
from jobsched.tasks import TaskRegistry
from jobsched.worker.worker import Worker
from tests.unit.fakes import Events, FakeBroker, FakeWorkerStore, StoredExecution

pytestmark = pytest.mark.timeout(20)


class Harness:
    def __init__(self, prefetch: int = 2048) -> None:
        self.events = Events()
        self.runs: list[uuid.UUID] = []
        self.failing: set[uuid.UUID] = set()
        self.release = asyncio.Event()
        self.release.set()
        self.registry = TaskRegistry()
        self.registry.register(self._task, "tests:task")
        self.store = FakeWorkerStore(self.events, payload={"function": "tests:task"},
                                     max_attempts=1)
        self.broker = FakeBroker(self.events)
        settings = Settings(instance="w1", worker_lease_s=30, drain_timeout_s=1,
                            worker_prefetch=prefetch)
        self.worker = Worker(settings, self.store, self.broker, self.registry,
                             metrics=Metrics("worker", "w1"))

    async def _task(self, context: object) -> None:
        execution_id = context.execution_id  # type: ignore[attr-defined]
        self.runs.append(execution_id)
        self.events.add("run", execution_id)
        await self.release.wait()
        if execution_id in self.failing:
            raise RuntimeError("boom")

    def executions(self, count: int, due: datetime | None = None) -> list[StoredExecution]:
        made = [self.store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1,
                                               due or datetime.now(UTC)))
                for _ in range(count)]
        return made

    @staticmethod
    def body(executions: list[StoredExecution], due: datetime | None = None) -> bytes:
        return AttemptMessage.encode_many(
            [AttemptMessage(e.id, e.job_id, e.attempt, due) for e in executions])


async def started(h: Harness) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    return stop, running


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    stop, running = await started(h)
    yield h
    stop.set()
    await asyncio.wait_for(running, 5)


def test_several_attempts_round_trip_and_one_is_encoded_alone() -> None:
    due = datetime.now(UTC)
    attempts = [AttemptMessage(uuid.uuid4(), uuid.uuid4(), i + 1, due, "python",
                               Priority.HIGH) for i in range(3)]
    body = AttemptMessage.encode_many(attempts)
    assert body.startswith(b"[")
    assert AttemptMessage.decode_many(body) == attempts
    alone = AttemptMessage.encode_many(attempts[:1])
    assert alone == attempts[0].encode()  # what a worker of an older version reads
    assert AttemptMessage.decode_many(alone) == attempts[:1]
    with pytest.raises(ValueError):
        AttemptMessage.encode_many([])


@pytest.mark.parametrize("body", [b"[]", b"[1]", b'[{"attempt": 1}]', b"[null]",
                                  b'["x", "y"]', b"[" + b"{}," * 3 + b"{}]"])
def test_a_list_with_any_malformed_attempt_is_malformed_whole(body: bytes) -> None:
    with pytest.raises(MessageError):
        AttemptMessage.decode_many(body)


async def test_every_attempt_runs_and_the_message_is_acked_once_all_are_recorded(
        harness: Harness) -> None:
    harness.store.commit_gate = gate = asyncio.Event()
    executions = harness.executions(5)
    delivery = harness.broker.deliver(harness.body(executions), "several")
    for _ in range(100):
        if len(harness.runs) == 5:
            break
        await asyncio.sleep(0.02)
    assert sorted(harness.runs) == sorted(e.id for e in executions)
    await asyncio.sleep(0.05)
    assert not delivery.settled.is_set(), "acked before the results were committed"
    gate.set()
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert harness.events.count("ack") == 1
    assert all(harness.store.executions[e.id].state == ExecutionState.SUCCEEDED
               for e in executions)
    last_commit = max(harness.events.index("commit", e.id) for e in executions)
    assert last_commit < harness.events.index("ack", "several")


async def test_a_dead_attempt_is_copied_alone_to_the_dead_letter_queue(
        harness: Harness) -> None:
    executions = harness.executions(3)
    harness.failing.add(executions[1].id)
    delivery = harness.broker.deliver(harness.body(executions), "several")
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert [m.execution_id for m in harness.broker.dead] == [executions[1].id]
    assert harness.store.executions[executions[1].id].state == ExecutionState.DEAD
    # The message itself is acked (its other attempts succeeded), not rejected whole.
    assert ("ack", "several") in harness.events.log
    assert harness.events.count("reject") == 0


async def test_attempts_already_claimed_elsewhere_are_acked_unrun(harness: Harness) -> None:
    executions = harness.executions(4)
    first = harness.broker.deliver(harness.body(executions[:2]), "first")
    await asyncio.wait_for(first.settled.wait(), 5)
    # The same two again, with two new ones: a redelivery after a worker's death.
    again = harness.broker.deliver(harness.body(executions), "again")
    await asyncio.wait_for(again.settled.wait(), 5)
    assert sorted(harness.runs) == sorted(e.id for e in executions)  # each ran once
    assert harness.worker.stats["lost_claims"] == 2
    assert ("ack", "again") in harness.events.log


async def test_a_drain_requeues_the_message_when_an_attempt_was_not_started() -> None:
    h = Harness()
    stop, running = await started(h)
    now = h.executions(2)
    later_due = datetime.now(UTC) + timedelta(seconds=30)
    later = h.executions(1, due=later_due)
    body = AttemptMessage.encode_many(
        [AttemptMessage(e.id, e.job_id, 1) for e in now]
        + [AttemptMessage(later[0].id, later[0].job_id, 1, later_due)])
    delivery = h.broker.deliver(body, "mixed")
    for _ in range(100):
        if len(h.runs) == 2:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert delivery.settled.is_set()
    assert ("nack", "mixed") in h.events.log and h.events.count("ack") == 0
    assert sorted(h.runs) == sorted(e.id for e in now)  # the held one never ran
    assert h.store.executions[later[0].id].state == ExecutionState.QUEUED


async def test_attempts_waiting_in_the_worker_are_bounded_by_the_prefetch() -> None:
    h = Harness(prefetch=3)
    h.release.clear()  # every run blocks until released
    stop, running = await started(h)
    executions = h.executions(8)
    delivery = h.broker.deliver(h.body(executions), "eight")
    await asyncio.sleep(0.3)
    assert len(h.runs) == 3 and h.worker.inflight == 3  # the rest wait in their message
    h.release.set()
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert sorted(h.runs) == sorted(e.id for e in executions)
    assert h.events.count("ack") == 1
    stop.set()
    await asyncio.wait_for(running, 5)
