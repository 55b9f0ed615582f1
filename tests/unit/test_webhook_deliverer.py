"""The delivery loop's own bookkeeping, on an in-memory store (tests/unit/fakes.py): each
endpoint gets at most its share of the slots, a slot frees when its request is answered
(before the result is recorded) and a freed slot is claimed again at once, not at the
next poll; a drain records what was in flight."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from jobsched.crypto import SecretBox, new_key
from jobsched.domain.egress import EgressPolicy
from jobsched.metrics import Metrics
from jobsched.ports import DeliveryResult, DueDelivery
from jobsched.settings import Settings
from jobsched.worker.webhooks import WebhookDeliverer
from tests.unit.fakes import FakeWebhookStore


def _due(endpoint: uuid.UUID) -> DueDelivery:
    return DueDelivery(endpoint, uuid.uuid4(), "execution.succeeded", {}, datetime.now(UTC),
                       1, "https://example.com/hook", b"", None)


class Gated(WebhookDeliverer):
    """Attempts that end when the test says so."""

    def __init__(self, store: FakeWebhookStore, **settings: object) -> None:
        super().__init__(Settings(instance="unit", webhook_poll_s=30, **settings),  # type: ignore[arg-type]
                         store, SecretBox([new_key()]), EgressPolicy(), Metrics("w", "unit"))
        self.open: list[tuple[DueDelivery, asyncio.Event]] = []

    async def attempt(self, delivery: DueDelivery) -> DeliveryResult:
        gate = asyncio.Event()
        self.open.append((delivery, gate))
        await gate.wait()
        return DeliveryResult(delivery.endpoint_id, delivery.event_id, delivery.attempt,
                              "succeeded", None, 200, None, "", 1.0)


async def _settle() -> None:
    """Until the loop, the claims and the results' batch (2 ms) have had their turn."""
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_each_endpoint_gets_its_share_and_a_freed_slot_is_taken_at_once() -> None:
    store = FakeWebhookStore()
    busy, quiet = uuid.uuid4(), uuid.uuid4()
    for _ in range(10):
        store.add(_due(busy))
    store.add(_due(quiet))
    deliverer = Gated(store, webhook_concurrency=6, webhook_endpoint_concurrency=3)
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    await _settle()
    assert sorted(d.endpoint_id == quiet for d, _ in deliverer.open) == [False] * 3 + [True]
    # the busy endpoint's slots are full: the next claim asks with none free for it
    first, gate = next((d, g) for d, g in deliverer.open if d.endpoint_id == busy)
    gate.set()
    await _settle()
    assert store.claims[-1]["free"][busy] == 1  # asked at once, not after the 30 s poll
    assert len([d for d, _ in deliverer.open if d.endpoint_id == busy]) == 4
    assert [r.event_id for r in store.recorded] == [first.event_id]
    stop.set()
    for _, gate in deliverer.open:
        gate.set()
    await asyncio.wait_for(task, 5)
    assert len(store.recorded) == 5  # the drain recorded every attempt in flight


async def test_a_process_out_of_cpu_sends_one_at_a_time_then_resumes() -> None:
    """While the event loop lags (the jobs of this worker take the CPU) each endpoint gets
    one delivery at a time (a hung one still holds only its own); once the loop keeps up
    again, the full share is claimed at once."""
    store = FakeWebhookStore()
    endpoint, other = uuid.uuid4(), uuid.uuid4()
    for _ in range(10):
        store.add(_due(endpoint))
    store.add(_due(other))
    deliverer = Gated(store, webhook_concurrency=6, webhook_endpoint_concurrency=6)
    deliverer._lag = 1.0  # as if the loop had lagged a second
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    await _settle()
    assert deliverer.throttled
    assert sorted(d.endpoint_id == other for d, _ in deliverer.open) == [False, True]
    for _ in range(40):  # the smoothed lag decays below the threshold within ~1.5 s
        await asyncio.sleep(0.1)
        if len(deliverer.open) == 6:
            break
    assert not deliverer.throttled and len(deliverer.open) == 6
    stop.set()
    for _, gate in deliverer.open:
        gate.set()
    await asyncio.wait_for(task, 5)


class Saturated(Gated):
    """Throttled for as long as the test says (the loop's lag, stood in for)."""

    saturated = True

    @property
    def throttled(self) -> bool:
        return self.saturated


async def test_a_process_out_of_cpu_sends_at_the_saturated_rate_then_catches_up() -> None:
    """Out of CPU, the worker claims no more than webhook_saturated_rate deliveries a
    second (one second's worth at once, then as the bucket refills), whatever its slots;
    once it keeps up again, it claims everything due at once."""
    store = FakeWebhookStore()
    for _ in range(30):
        store.add(_due(uuid.uuid4()))  # 30 endpoints: one at a time each is no limit here
    deliverer = Saturated(store, webhook_concurrency=64, webhook_saturated_rate=10)
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    await _settle()
    assert len(deliverer.open) == 10  # the bucket's one second
    await asyncio.sleep(0.5)
    assert 13 <= len(deliverer.open) <= 17  # ~5 more at 10/s, woken by the refill timer
    deliverer.saturated = False
    deliverer.wake.set()  # as the lag watcher does when the lag ends
    await _settle()
    assert len(deliverer.open) == 30
    stop.set()
    for _, gate in deliverer.open:
        gate.set()
    await asyncio.wait_for(task, 5)
    assert len(store.recorded) == 30
