"""The worker's claim → run → record → ack ordering, on in-memory ports: a message is
acked only after its result is committed, a duplicate delivery is acked without running,
the last failed attempt is rejected into the dead-letter queue, and a message that is not
an attempt is dead-lettered unrun."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from jobsched.domain.states import ExecutionState
from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.settings import Settings
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.worker import Worker
from tests.unit.fakes import Events, FakeBroker, FakeDelivery, FakeWorkerStore, StoredExecution

pytestmark = pytest.mark.timeout(20)


class Harness:
    def __init__(self, max_attempts: int = 1) -> None:
        self.events = Events()
        self.runs: list[uuid.UUID] = []
        self.ran = asyncio.Event()
        self.registry = TaskRegistry()
        self.outcome: Callable[[], None] = lambda: None
        self.registry.register(self._task, "tests:task")
        self.store = FakeWorkerStore(self.events, payload={"function": "tests:task"},
                                     max_attempts=max_attempts)
        self.broker = FakeBroker(self.events)
        settings = Settings(instance="w1", worker_lease_s=30, drain_timeout_s=1)
        self.worker = Worker(settings, self.store, self.broker, self.registry,
                             metrics=Metrics("worker", "w1"))

    async def _task(self, context: object) -> None:
        self.runs.append(context.execution_id)  # type: ignore[attr-defined]
        self.events.add("run", context.execution_id)  # type: ignore[attr-defined]
        self.ran.set()
        self.outcome()

    def execution(self, attempt: int = 1) -> StoredExecution:
        return self.store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), attempt,
                                              datetime.now(UTC)))

    def deliver(self, execution: StoredExecution, label: object = None) -> FakeDelivery:
        body = AttemptMessage(execution.id, execution.job_id, execution.attempt).encode()
        return self.broker.deliver(body, label if label is not None else execution.id)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    yield h
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_ack_waits_for_the_result_to_commit(harness: Harness) -> None:
    gate = harness.store.commit_gate = asyncio.Event()
    execution = harness.execution()
    delivery = harness.deliver(execution)
    await asyncio.wait_for(harness.ran.wait(), 5)
    await asyncio.sleep(0.05)  # the run is over; its result is waiting on the database
    assert not delivery.settled.is_set(), "acked before the result was committed"
    gate.set()
    await asyncio.wait_for(delivery.settled.wait(), 5)
    log = harness.events
    assert log.index("run", execution.id) < log.index("commit", execution.id) \
        < log.index("ack", execution.id)
    assert harness.store.executions[execution.id].state == ExecutionState.SUCCEEDED


async def test_a_result_that_cannot_be_committed_is_retried_and_only_then_acked(
        harness: Harness) -> None:
    harness.store.fail_commits = 2
    execution = harness.execution()
    delivery = harness.deliver(execution)
    await asyncio.wait_for(delivery.settled.wait(), 10)
    log = harness.events.log
    assert [w for w, _ in log if w in ("commit_failed", "commit", "ack")] == [
        "commit_failed", "commit_failed", "commit", "ack"]
    assert harness.runs == [execution.id]  # recorded again, never run again


async def test_a_duplicate_delivery_is_acked_without_running(harness: Harness) -> None:
    execution = harness.execution()
    first = harness.deliver(execution, "first")
    await asyncio.wait_for(first.settled.wait(), 5)
    second = harness.deliver(execution, "second")  # RabbitMQ redelivered the same attempt
    await asyncio.wait_for(second.settled.wait(), 5)
    assert harness.runs == [execution.id]
    assert ("ack", "second") in harness.events.log
    assert harness.events.count("commit") == 1


async def test_two_copies_in_the_same_claim_batch_run_once(harness: Harness) -> None:
    execution = harness.execution()
    copies = [harness.deliver(execution, i) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*(c.settled.wait() for c in copies)), 5)
    assert harness.runs == [execution.id]
    assert [w for w, _ in harness.events.log if w == "ack"] == ["ack"] * 3


async def test_the_last_failed_attempt_is_rejected_into_the_dead_letter_queue(
        harness: Harness) -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    harness.outcome = fail
    execution = harness.execution()
    delivery = harness.deliver(execution)
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert harness.store.executions[execution.id].state == ExecutionState.DEAD
    log = harness.events
    assert log.index("commit", execution.id) < log.index("reject", execution.id)


async def test_a_malformed_message_is_dead_lettered_unrun(harness: Harness) -> None:
    delivery = harness.broker.deliver(b'{"execution_id": "nope"}', "bad")
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert ("reject", "bad") in harness.events.log
    assert harness.runs == [] and harness.events.count("claim") == 0
    assert harness.worker.stats["malformed"] == 1


async def test_a_delivery_published_ahead_is_claimed_just_before_due_and_runs_when_due(
        harness: Harness) -> None:
    from datetime import timedelta

    execution = harness.execution()
    due = datetime.now(UTC) + timedelta(seconds=0.6)
    execution.scheduled_for = due
    body = AttemptMessage(execution.id, execution.job_id, 1, due).encode()
    delivery = harness.broker.deliver(body, "ahead")
    await asyncio.sleep(0.3)
    assert harness.events.count("claim") == 0  # held unclaimed: a crash now costs nothing
    await asyncio.wait_for(harness.ran.wait(), 5)
    ran_at = datetime.now(UTC)
    assert harness.events.count("claim") == 1 and ran_at >= due  # claimed ahead, run on time
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert harness.events.index("claim", execution.id) < harness.events.index("ack", "ahead")


async def test_plain_functions_published_ahead_start_on_threads_when_due_not_before() -> None:
    """Claimed ahead, a plain function is handed to the task threads by its alarm at the
    instant, with the others due then (no task woken for it); none is called before it is
    due, each result records when its thread called it, and one taken away before it was
    due is never called."""
    from datetime import timedelta

    h = Harness()
    called: dict[uuid.UUID, float] = {}

    def plain(context: TaskContext) -> None:
        called[context.execution_id] = time.time()

    h.registry.register(plain, "tests:plain")
    h.store.payload = {"function": "tests:plain"}
    recorded: dict[uuid.UUID, datetime | None] = {}
    finish = h.store.finish_attempts

    async def recording(results, worker):  # type: ignore[no-untyped-def]
        recorded.update({r.execution_id: r.started_at for r in results})
        return await finish(results, worker)

    h.store.finish_attempts = recording  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    due = datetime.now(UTC) + timedelta(seconds=0.6)
    executions = []
    try:
        for _ in range(51):
            execution = h.execution()
            execution.scheduled_for = due
            executions.append(execution.id)
            h.broker.deliver(AttemptMessage(execution.id, execution.job_id, 1, due).encode(),
                             execution.id)
        for _ in range(100):
            if h.events.count("claim") == 51:
                break
            await asyncio.sleep(0.02)
        assert h.events.count("claim") == 51 and called == {}  # claimed ahead, not run
        taken, ran = executions[-1], executions[:-1]
        await asyncio.sleep(0.1)  # the claims' tasks have gone on to wait for their time
        assert time.time() < due.timestamp()
        h.worker.take_away(taken)
        await asyncio.sleep(0.02)
        assert h.worker._lingering == {} and taken not in h.worker._running  # freed at once
        for _ in range(200):
            if len(recorded) == 50:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert sorted(called) == sorted(ran)  # the one taken away was never called
        assert min(called.values()) >= due.timestamp()
        for execution_id, at in called.items():
            started = recorded[execution_id]
            assert started is not None and started.timestamp() == pytest.approx(at, abs=0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def test_a_drain_gives_unclaimed_deliveries_back_unrun() -> None:
    from datetime import timedelta

    h = Harness()
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    execution = h.execution()
    later = datetime.now(UTC) + timedelta(seconds=30)
    h.broker.deliver(
        AttemptMessage(execution.id, execution.job_id, 1, later).encode(), "later")
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert ("nack", "later") in h.events.log  # back to the queue for another worker
    assert h.events.count("claim") == 0 and h.runs == []


async def test_free_slots_go_to_high_priority_work_first() -> None:
    from jobsched.domain.priority import Priority

    h = Harness()
    h.worker = Worker(Settings(instance="w1", worker_concurrency=1), h.store, h.broker,
                      h.registry, metrics=Metrics("worker", "w1"))
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    h.outcome = lambda: None
    order: list[str] = []
    original = h._task

    async def task(context: object) -> None:
        await original(context)
        order.append(labels[context.execution_id])  # type: ignore[attr-defined]
        if len(order) == 1:
            await hold()

    h.registry.register(task, "tests:task")
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    labels: dict[uuid.UUID, str] = {}
    deliveries = []
    for label, band in [("first", Priority.LOW), ("low-1", Priority.LOW),
                        ("low-2", Priority.LOW), ("high-1", Priority.HIGH),
                        ("high-2", Priority.HIGH)]:
        execution = h.execution()
        labels[execution.id] = label
        body = AttemptMessage(execution.id, execution.job_id, 1, None, "python", band).encode()
        deliveries.append(h.broker.deliver(body, label))
        await asyncio.sleep(0.02)  # in this order: the low ones wait before the high ones
    gate.set()
    await asyncio.wait_for(asyncio.gather(*(d.settled.wait() for d in deliveries)), 5)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert order[0] == "first" and order[1:3] == ["high-1", "high-2"], order
