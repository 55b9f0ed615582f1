"""The RabbitMQ adapter against a real broker: quorum queues, confirms, dead-lettering."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from jobsched.adapters.rabbitmq import RabbitBroker
from jobsched.messages import AttemptMessage, MessageError
from jobsched.ports import Delivery
from jobsched.settings import Settings


def _broker(settings: Settings, per_message: int = 1) -> RabbitBroker:
    return RabbitBroker(settings.amqp_url, settings.queue_names, settings.dead_letter_exchange,
                        settings.dead_letter_queue, per_message=per_message)


def test_message_round_trip_and_rejects() -> None:
    message = AttemptMessage(uuid.uuid4(), uuid.uuid4(), 2)
    assert AttemptMessage.decode(message.encode()) == message
    for body in (b"", b"nope", b"[]", b'{"execution_id": "x", "job_id": "y", "attempt": 1}',
                 b'{"execution_id": "%s", "job_id": "%s", "attempt": 0}'
                 % (str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode())):
        with pytest.raises(MessageError):
            AttemptMessage.decode(body)


async def test_attempts_of_a_band_travel_together_up_to_per_message(
        settings: Settings) -> None:
    """250 attempts, most normal: normal ones go 100 to a message (100, 100, 40), the high
    ones in one; every attempt arrives once, in the band it was published to."""
    from jobsched.domain.priority import Priority

    broker = _broker(settings, per_message=100)
    await broker.connect()
    try:
        bands = [Priority.HIGH if i % 25 == 0 else Priority.NORMAL for i in range(250)]
        messages = [AttemptMessage(uuid.uuid4(), uuid.uuid4(), 1, priority=band)
                    for band in bands]
        assert await broker.publish_many(messages) == [True] * 250
        depths: dict[str, int] = {}
        for _ in range(50):
            depths = {q: s.messages for q, s in (await broker.queue_stats()).items()}
            if depths[settings.queue_names[Priority.NORMAL]] == 3:
                break
            await asyncio.sleep(0.1)
        assert depths[settings.queue_names[Priority.NORMAL]] == 3
        assert depths[settings.queue_names[Priority.HIGH]] == 1
        got: list[tuple[AttemptMessage, int]] = []
        done = asyncio.Event()

        async def on_message(delivery: Delivery) -> None:
            parts = AttemptMessage.decode_many(delivery.body)
            got.extend((part, len(parts)) for part in parts)
            await delivery.ack()
            if len(got) == len(messages):
                done.set()

        cancel = await broker.consume(on_message, prefetch=10)
        await asyncio.wait_for(done.wait(), 10)
        await cancel()
        assert sorted(str(m.execution_id) for m, _ in got) == sorted(
            str(m.execution_id) for m in messages)
        assert all(m.priority == Priority.HIGH for m, size in got if size == 10)
        assert sorted({size for _, size in got}) == [10, 40, 100]
    finally:
        await broker.close()


async def test_publish_confirm_consume_and_dead_letter(settings: Settings) -> None:
    broker = _broker(settings)
    await broker.connect()
    try:
        messages = [AttemptMessage(uuid.uuid4(), uuid.uuid4(), 1) for _ in range(50)]
        assert await broker.publish_many(messages) == [True] * 50
        got: list[AttemptMessage] = []
        done = asyncio.Event()

        async def on_message(message: Delivery) -> None:
            decoded = AttemptMessage.decode(message.body)
            got.append(decoded)
            if decoded == messages[0]:
                await message.reject(requeue=False)
            else:
                await message.ack()
            if len(got) == len(messages):
                done.set()

        cancel = await broker.consume(on_message, prefetch=10)
        await asyncio.wait_for(done.wait(), 10)
        await cancel()
        assert sorted(str(m.execution_id) for m in got) == sorted(
            str(m.execution_id) for m in messages)
        for _ in range(50):
            depths = {q: s.messages for q, s in (await broker.queue_stats()).items()}
            if depths[settings.dead_letter_queue] == 1:
                break
            await asyncio.sleep(0.1)
        assert depths == {**{q: 0 for q in settings.queue_names.values()},
                          settings.dead_letter_queue: 1}
    finally:
        await broker.close()
