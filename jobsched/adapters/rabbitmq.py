"""RabbitMQ adapter (aio-pika): a durable quorum queue of execution attempts per priority
band, a dead-letter exchange and queue, publisher confirms pipelined per batch, and one
prefetch-limited consumer per band. Implements ``jobsched.ports.Broker``.

RabbitMQ carries work only: every message names an execution that PostgreSQL already holds,
so a lost or repeated message is recovered (re-publish) or harmless (the claim fails).
Quorum queues on RabbitMQ 3.10 have no message priority (4.0 adds two levels), and a
broker's priority turns back into FIFO inside a consumer with a large prefetch, so
priority is one queue per band here and the worker chooses among them
(jobsched.worker.slots).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import cast

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from jobsched.domain.priority import Priority
from jobsched.messages import AttemptMessage
from jobsched.ports import Delivery, QueueStats

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
#: Attempts of one band published together travel in one message, up to this many
#: (the ``message_attempts`` setting).
MESSAGE_ATTEMPTS = 100


class RabbitBroker:
    """One robust connection with a confirming channel for publishing, and one robust
    connection per band for consuming."""

    def __init__(self, url: str, queue_names: Mapping[Priority, str], dead_exchange: str,
                 dead_queue: str, *, per_message: int = MESSAGE_ATTEMPTS) -> None:
        if per_message < 1:
            raise ValueError("per_message must be at least 1")
        self.url = url
        self.per_message = per_message
        self.queue_names = dict(queue_names)
        self.dead_exchange = dead_exchange
        self.dead_queue = dead_queue
        self._connection: AbstractRobustConnection | None = None
        self._consuming: list[AbstractRobustConnection] = []
        self._publish_channel: AbstractRobustChannel | None = None
        self._band_channels: dict[Priority, AbstractRobustChannel] = {}
        # Bumped on every reconnection, so the leader knows to re-publish its outbox at
        # once instead of waiting for the unconfirmed messages to age.
        self._reconnections = 0

    @property
    def reconnections(self) -> int:
        return self._reconnections

    async def connect(self) -> bool:
        """Connect and declare the queues; True once done (raises otherwise)."""
        # Reconnect attempts every second (aio-pika's default is 5 s): a restarted broker
        # is used again about as soon as it accepts connections.
        self._connection = await aio_pika.connect_robust(self.url, timeout=10,
                                                         reconnect_interval=1)
        self._connection.reconnect_callbacks.add(self._reconnected)
        channel = await self._connection.channel(publisher_confirms=True)
        for band in Priority:
            await self._declare(channel, band)
        self._publish_channel = channel  # type: ignore[assignment]
        for band in Priority:
            self._band_channels[band] = await self._connection.channel(  # type: ignore[assignment]
                publisher_confirms=True)
        return True

    async def _declare(self, channel: aio_pika.abc.AbstractChannel,
                       band: Priority) -> AbstractQueue:
        dead = await channel.declare_exchange(
            self.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(
            self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead)
        return await channel.declare_queue(
            self.queue_names[band],
            durable=True,
            arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": self.dead_exchange},
        )

    def _reconnected(self, *_: object) -> None:
        self._reconnections += 1
        log.info("RabbitMQ connection restored (%d)", self._reconnections)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed and bool(
            getattr(self._connection, "connected", asyncio.Event()).is_set()
        )

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        """Publish a batch, with all confirms in flight at once; True where confirmed. The
        attempts of one band travel together, up to ``per_message`` in a message (one
        message's cost in RabbitMQ, here and in the worker, for many executions). While the
        connection is down nothing is tried: the outbox keeps the batch."""
        if not messages:
            return []
        assert self._publish_channel is not None, "connect() first"
        if not self.is_connected:
            log.debug("RabbitMQ not connected: %d messages stay in the outbox", len(messages))
            return [False] * len(messages)
        exchanges = {band: channel.default_exchange
                      for band, channel in self._band_channels.items()}
        errors: list[BaseException] = []
        by_band: dict[Priority, list[int]] = {}
        for index, message in enumerate(messages):
            by_band.setdefault(message.priority, []).append(index)
        groups = [indexes[start:start + self.per_message]
                  for indexes in by_band.values()
                  for start in range(0, len(indexes), self.per_message)]

        async def one(group: list[int]) -> bool:
            parts = [messages[i] for i in group]
            band = parts[0].priority
            try:
                await exchanges[band].publish(
                    aio_pika.Message(
                        AttemptMessage.encode_many(parts),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=parts[0].message_id,
                    ),
                    routing_key=self.queue_names[band],
                    timeout=PUBLISH_TIMEOUT_S,
                )
                return True
            except Exception as exc:  # noqa: BLE001 - the outbox re-publishes any failure
                errors.append(exc)
                return False

        outcomes = await asyncio.gather(*(one(group) for group in groups))
        confirmed = [False] * len(messages)
        for group, ok in zip(groups, outcomes, strict=True):
            for index in group:
                confirmed[index] = ok
        if errors:
            log.warning("%d of %d publishes failed (their executions stay in the outbox): %r",
                        len(errors), len(groups), errors[0])
        return confirmed

    async def publish_dead(self, messages: Sequence[AttemptMessage]) -> None:
        """Copy messages to the dead-letter exchange (for executions dead without a worker
        to reject their message, e.g. reaped after the worker died)."""
        if not messages:
            return
        assert self._publish_channel is not None, "connect() first"
        exchange = await self._publish_channel.get_exchange(self.dead_exchange)
        await asyncio.gather(*(
            exchange.publish(
                aio_pika.Message(m.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 content_type="application/json",
                                 message_id=m.message_id),
                routing_key=self.dead_queue, timeout=PUBLISH_TIMEOUT_S)
            for m in messages
        ))

    async def consume(
        self,
        on_delivery: Callable[[Delivery], Awaitable[None]],
        prefetch: int,
    ) -> Callable[[], Awaitable[None]]:
        """Consume every band's queue with manual acks, ``prefetch`` unacked deliveries per
        band (so a backlog of one band never keeps another's messages from the worker);
        returns a coroutine function that stops all of them. aio-pika's incoming message
        is a Delivery as it is (body, ack, reject, nack).

        Each band has a connection of its own: on one shared connection a high message
        reached the worker 1.5-3 s after RabbitMQ confirmed it, queued on the wire behind
        the deliveries of a saturating low backlog (`jobsched bench priority`); on its own
        it arrives as it is confirmed."""
        assert self._connection is not None, "connect() first"
        handler = cast(Callable[[AbstractIncomingMessage], Awaitable[None]], on_delivery)
        consumers: list[tuple[AbstractQueue, str]] = []
        for band in Priority:
            connection = await aio_pika.connect_robust(self.url, timeout=10,
                                                       reconnect_interval=1)
            self._consuming.append(connection)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await self._declare(channel, band)
            consumers.append((queue, await queue.consume(handler, no_ack=False)))

        async def cancel() -> None:
            for queue, tag in consumers:
                try:
                    await queue.cancel(tag, timeout=5)
                except Exception as exc:  # noqa: BLE001
                    log.warning("cancelling the consumer of %s failed: %r", queue.name, exc)

        return cancel

    async def queue_stats(self) -> dict[str, QueueStats]:
        """Messages and consumers per queue, from a fresh passive declare (a robust
        channel caches the counts of its own declarations)."""
        if self._connection is None:
            raise ConnectionError("no RabbitMQ connection")
        channel = await self._connection.channel()
        try:
            stats = {}
            for name in (*self.queue_names.values(), self.dead_queue):
                result = (await channel.declare_queue(name, passive=True)).declaration_result
                stats[name] = QueueStats(result.message_count or 0, result.consumer_count or 0)
            return stats
        finally:
            await channel.close()

    async def close(self) -> None:
        for connection in self._consuming:
            await connection.close()
        self._consuming.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
