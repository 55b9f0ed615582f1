"""A plain function cancelled on a worker thread cannot be stopped: its attempt is closed
at once, but its run slot stays taken until the thread returns, so threads left running
never make more runs at once than ``worker_concurrency``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime

import pytest

from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.settings import Settings
from jobsched.tasks import TaskRegistry
from jobsched.worker.worker import Worker
from tests.unit.fakes import (
    Events,
    FakeBroker,
    FakeCoordinator,
    FakeWorkerStore,
    StoredExecution,
)

pytestmark = pytest.mark.timeout(20)


async def test_a_cancelled_thread_keeps_its_slot_until_it_returns() -> None:
    events = Events()
    gate = threading.Event()
    started: list[str] = []

    def blocks(label: str) -> None:
        started.append(label)
        if label == "first":
            gate.wait(10)

    registry = TaskRegistry()
    registry.register(blocks, "tests:blocks")
    store = FakeWorkerStore(events, payload={"function": "tests:blocks"})
    broker = FakeBroker(events)
    worker = Worker(Settings(instance="w1", worker_concurrency=1), store, broker, registry,
                    metrics=Metrics("worker", "w1"))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(broker.consuming.wait(), 5)

    def deliver(label: str) -> uuid.UUID:
        store.payload = {"function": "tests:blocks", "args": {"label": label}}
        execution = store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1,
                                               datetime.now(UTC)))
        broker.deliver(AttemptMessage(execution.id, execution.job_id, 1).encode(), label)
        return execution.id

    async def until(check: object) -> None:
        for _ in range(200):
            if check():  # type: ignore[operator]
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not met in time")

    try:
        first = deliver("first")
        await until(lambda: started == ["first"])
        worker.take_away(first)
        await until(lambda: events.count("close_attempt") == 1)  # recorded at once
        deliver("second")
        await asyncio.sleep(0.5)
        assert started == ["first"], "a second run started while the first's thread ran"
        gate.set()
        await until(lambda: started == ["first", "second"])
    finally:
        gate.set()
        stop.set()
        await asyncio.wait_for(running, 5)


class RecordingLock:
    def __init__(self, released: list[str]) -> None:
        self.released = released

    async def release(self) -> None:
        self.released.append("released")


class LockingCoordinator(FakeCoordinator):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []

    async def acquire_job_lock(self, job_id: uuid.UUID,  # type: ignore[override]
                               timeout_s: float) -> RecordingLock:
        return RecordingLock(self.released)


async def test_a_cancelled_thread_keeps_its_job_lock_until_it_returns() -> None:
    """concurrency=forbid/replace: no second run of the job may overlap the first's thread."""
    events = Events()
    gate = threading.Event()
    returned = threading.Event()

    def blocks() -> None:
        gate.wait(10)
        returned.set()

    registry = TaskRegistry()
    registry.register(blocks, "tests:blocks")
    store = FakeWorkerStore(events, payload={"function": "tests:blocks"})
    store.concurrency = "forbid"
    broker = FakeBroker(events)
    coordinator = LockingCoordinator()
    worker = Worker(Settings(instance="w1"), store, broker, registry,
                    coordinator=coordinator, metrics=Metrics("worker", "w1"))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(broker.consuming.wait(), 5)
    try:
        execution = store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1,
                                               datetime.now(UTC)))
        broker.deliver(AttemptMessage(execution.id, execution.job_id, 1).encode(), "one")
        for _ in range(200):
            if worker._running:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        worker.take_away(execution.id)
        for _ in range(200):
            if events.count("close_attempt"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert coordinator.released == [], "the lock was released while the thread ran"
        gate.set()
        for _ in range(200):
            if coordinator.released:
                break
            await asyncio.sleep(0.02)
        assert returned.is_set() and coordinator.released == ["released"]
    finally:
        gate.set()
        stop.set()
        await asyncio.wait_for(running, 5)
