"""A plain function cancelled on a worker thread cannot be stopped: its attempt is closed
at once, but its run slot stays taken until the thread returns, so threads left running
never make more runs at once than ``worker_concurrency``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.settings import Settings
from jobsched.tasks import TaskRegistry
from jobsched.worker.python import ThreadRunner
from jobsched.worker.worker import Worker
from tests.unit.fakes import (
    Events,
    FakeBroker,
    FakeCoordinator,
    FakeWorkerStore,
    StoredExecution,
)

pytestmark = pytest.mark.timeout(20)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


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

    try:
        first = deliver("first")
        await _until(lambda: started == ["first"])
        worker.take_away(first)
        await _until(lambda: events.count("close_attempt") == 1)  # recorded at once
        deliver("second")
        await asyncio.sleep(0.5)
        assert started == ["first"], "a second run started while the first's thread ran"
        gate.set()
        await _until(lambda: started == ["first", "second"])
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


async def test_a_run_waiting_for_a_thread_records_when_its_thread_called_it() -> None:
    """More plain-function runs than task threads: a run claimed while every thread is
    busy starts when a thread calls it, and that is the start its result records (not
    when the worker began the attempt and queued it)."""
    events = Events()
    gate = threading.Event()
    called: dict[str, datetime] = {}

    def blocks(label: str) -> None:
        called[label] = datetime.now(UTC)
        if label == "first":
            gate.wait(10)

    class Recording(FakeWorkerStore):
        def __init__(self) -> None:
            super().__init__(events, payload={"function": "tests:blocks"})
            self.started: dict[uuid.UUID, datetime | None] = {}

        async def finish_attempts(self, results, worker):  # type: ignore[no-untyped-def]
            for result in results:
                self.started[result.execution_id] = result.started_at
            return await super().finish_attempts(results, worker)

    registry = TaskRegistry()
    registry.register(blocks, "tests:blocks")
    store = Recording()
    broker = FakeBroker(events)
    worker = Worker(Settings(instance="w1"), store, broker, registry,
                    metrics=Metrics("worker", "w1"))
    worker._threads = ThreadRunner(1)  # one task thread: the second run waits for it
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(broker.consuming.wait(), 5)
    ids = {}

    try:
        for label in ("first", "second"):
            store.payload = {"function": "tests:blocks", "args": {"label": label}}
            execution = store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1,
                                                   datetime.now(UTC)))
            broker.deliver(AttemptMessage(execution.id, execution.job_id, 1).encode(), label)
            ids[label] = execution.id
            await _until(lambda: events.count("claim") == len(ids))
            if label == "first":
                await _until(lambda: list(called) == ["first"])
        assert list(called) == ["first"]  # claimed, but its thread is busy
        await asyncio.sleep(0.3)
        opened = datetime.now(UTC)
        gate.set()
        await _until(lambda: len(store.started) == 2)
        second = store.started[ids["second"]]
        assert second is not None and second >= opened  # not when it was claimed and queued
        assert abs((second - called["second"]).total_seconds()) < 0.05
        first = store.started[ids["first"]]
        assert first is not None and first < opened
    finally:
        gate.set()
        stop.set()
        await asyncio.wait_for(running, 5)
