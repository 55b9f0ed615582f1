"""A workflow node on the worker, on in-memory ports: its function gets ``upstream`` and
``input``, its return value is recorded with its result, the nodes that result queued are
published by this worker after the commit, and the parent's message is acked after the
commit as any other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from jobsched.domain.states import ExecutionState
from jobsched.messages import AttemptMessage
from jobsched.metrics import Metrics
from jobsched.ports import Dispatch, NodeInputs
from jobsched.settings import Settings
from jobsched.tasks import TaskRegistry
from jobsched.worker.worker import Worker
from tests.unit.fakes import Events, FakeBroker, FakeWorkerStore, StoredExecution

pytestmark = pytest.mark.timeout(20)


class NodeHarness:
    def __init__(self) -> None:
        self.events = Events()
        self.calls: list[dict[str, Any]] = []
        registry = TaskRegistry()
        registry.register(self._node, "tests:node")
        registry.register(self._job, "tests:job")
        self.store = FakeWorkerStore(self.events, payload={"function": "tests:node"})
        self.broker = FakeBroker(self.events)
        self.worker = Worker(Settings(instance="w1", worker_lease_s=30, drain_timeout_s=1),
                             self.store, self.broker, registry, metrics=Metrics("worker", "w1"))

    def _node(self, upstream: dict[str, Any], input: dict[str, Any]) -> dict[str, Any]:
        self.calls.append({"upstream": upstream, "input": input})
        return {"seen": sorted(upstream), "day": input.get("day")}

    def _job(self) -> str:
        return "plain"

    def deliver(self, execution: StoredExecution) -> Any:
        body = AttemptMessage(execution.id, execution.job_id, execution.attempt).encode()
        return self.broker.deliver(body, execution.id)


@pytest.fixture
async def harness() -> AsyncIterator[NodeHarness]:
    h = NodeHarness()
    stop = asyncio.Event()
    running = asyncio.create_task(h.worker.run(stop))
    await asyncio.wait_for(h.broker.consuming.wait(), 5)
    yield h
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_a_node_runs_with_its_inputs_and_publishes_what_it_queued(
        harness: NodeHarness) -> None:
    run = uuid.uuid4()
    node = harness.store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1, datetime.now(UTC),
                                             workflow_run_id=run))
    harness.store.inputs[node.id] = NodeInputs({"day": 27}, {"a": 1, "b": None},
                                               datetime.now(UTC))
    children = [Dispatch(uuid.uuid4(), uuid.uuid4(), 1) for _ in range(2)]
    harness.store.queues[node.id] = children
    delivery = harness.deliver(node)
    await asyncio.wait_for(delivery.settled.wait(), 5)
    for _ in range(50):  # the children are published in the background
        if len(harness.store.published) == 2:
            break
        await asyncio.sleep(0.02)
    assert harness.calls == [{"upstream": {"a": 1, "b": None}, "input": {"day": 27}}]
    stored = harness.store.executions[node.id]
    assert stored.state == ExecutionState.SUCCEEDED
    assert orjson.loads(stored.result or "") == {"seen": ["a", "b"], "day": 27}
    log = harness.events
    for child in children:
        # Published only after the result that queued them was committed, then marked.
        assert log.index("commit", node.id) < log.index("publish", child.execution_id) \
            < log.index("mark_published", child.execution_id)
    assert log.index("commit", node.id) < log.index("ack", node.id)
    assert [m.execution_id for m in harness.broker.published] == [c.execution_id
                                                                  for c in children]


async def test_a_job_is_not_a_node(harness: NodeHarness) -> None:
    harness.store.payload = {"function": "tests:job"}
    job = harness.store.add(StoredExecution(uuid.uuid4(), uuid.uuid4(), 1, datetime.now(UTC)))
    delivery = harness.deliver(job)
    await asyncio.wait_for(delivery.settled.wait(), 5)
    assert harness.store.executions[job.id].state == ExecutionState.SUCCEEDED
    assert harness.store.executions[job.id].result is None
    assert harness.events.count("node_inputs") == 0 and harness.broker.published == []
