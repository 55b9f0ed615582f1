"""The worker writes a running python run's output so far every ``output_flush_s`` (one
call for all runs whose output changed, none when nothing changed), and a cancelled run's
attempt is closed with what it printed."""

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
from tests.unit.fakes import Events, FakeBroker, FakeWorkerStore, StoredExecution

pytestmark = pytest.mark.timeout(20)


async def test_running_output_is_streamed_only_when_it_changed() -> None:
    events = Events()
    step, stepped = threading.Event(), threading.Event()

    def prints_in_steps() -> None:
        print("one")
        stepped.set()
        step.wait(10)
        print("two")
        stepped.set()
        step.wait(10)

    registry = TaskRegistry()
    registry.register(prints_in_steps, "tests:steps")
    store = FakeWorkerStore(events, payload={"function": "tests:steps"})
    broker = FakeBroker(events)
    closed: list[str | None] = []

    async def close_attempt(execution_id: uuid.UUID, attempt: int, outcome: object,
                            error: str | None, output: str | None, exit_code: int | None,
                            scheduled_for: datetime | None = None) -> None:
        closed.append(output)

    store.close_attempt = close_attempt  # type: ignore[method-assign]
    worker = Worker(Settings(instance="w1", output_flush_s=0.1), store, broker, registry,
                    metrics=Metrics("worker", "w1"))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(broker.consuming.wait(), 5)
    execution = store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1, datetime.now(UTC)))

    def streamed() -> list[str]:
        return [detail[1] for what, detail in events.log if what == "stream_output"]

    try:
        broker.deliver(AttemptMessage(execution.id, execution.job_id, 1).encode(), "run")
        assert await asyncio.to_thread(stepped.wait, 5)
        await asyncio.sleep(0.35)  # three flush periods, one change
        assert streamed() == ["one\n"]
        stepped.clear()
        step.set()
        step.clear()
        assert await asyncio.to_thread(stepped.wait, 5)
        await asyncio.sleep(0.35)
        assert streamed() == ["one\n", "one\ntwo\n"]
        worker.take_away(execution.id)
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.02)
        assert closed == ["one\ntwo\n"]  # the cancelled attempt keeps what it printed
    finally:
        step.set()
        stop.set()
        await asyncio.wait_for(running, 5)
