"""What a cluster name owns outside PostgreSQL, and its removal: ``jobsched cluster purge``.

A cluster (``JOBSCHED_CLUSTER``) has RabbitMQ queues (one per priority band and the
dead-letter queue) and a dead-letter exchange, all named ``jobsched.<cluster>.…``, and a
ZooKeeper tree ``/jobsched/<cluster>`` (the election, the live worker registry, job locks).
Its database is not the cluster's to remove: a deployment's PostgreSQL database is named
by its own URL, and dropping it is a decision of its own.

A cluster is alive while a scheduler stands in its election, a worker is registered, or
anything consumes from its queues; purging then would pull the floor from under running
processes, so it is refused unless forced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import aio_pika
import aiozk
from aiormq.exceptions import ChannelClosed
from aiozk import exc as zk_exc

from jobsched.adapters.zookeeper import ELECTION_PATH, WORKERS_PATH
from jobsched.settings import Settings, mask_url

CALL_TIMEOUT_S = 10.0

# aiormq logs every failed connection attempt; the command reports it once, itself.
logging.getLogger("aiormq").setLevel(logging.CRITICAL)
logging.getLogger("aio_pika").setLevel(logging.CRITICAL)


class Unreachable(Exception):
    """RabbitMQ or ZooKeeper did not answer: the message names which, and where."""


@dataclass(frozen=True, slots=True)
class QueueFootprint:
    name: str
    messages: int
    consumers: int


@dataclass(slots=True)
class ClusterFootprint:
    """What exists of a cluster now, and who is alive in it."""

    cluster: str
    queues: list[QueueFootprint] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    zookeeper_path: str = ""
    zookeeper_exists: bool = False
    schedulers: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.queues and not self.exchanges and not self.zookeeper_exists

    @property
    def alive(self) -> list[str]:
        """Who holds the cluster: registered roles and consumers of its queues."""
        holders = [f"scheduler {s}" for s in self.schedulers]
        holders += [f"worker {w}" for w in self.workers]
        holders += [f"{q.consumers} consumer(s) of queue {q.name}" for q in self.queues
                    if q.consumers]
        return holders


def queue_names(settings: Settings) -> list[str]:
    return [*settings.queue_names.values(), settings.dead_letter_queue]


async def _zookeeper(settings: Settings) -> aiozk.ZKClient:
    """A client at the root (no chroot): the cluster's tree is looked at from outside."""
    client = aiozk.ZKClient(settings.zookeeper_hosts, session_timeout=10,
                            read_timeout=CALL_TIMEOUT_S)
    try:
        await asyncio.wait_for(client.start(), CALL_TIMEOUT_S)
    except (TimeoutError, OSError, zk_exc.ZKError) as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1)
        raise Unreachable(f"ZooKeeper at {settings.zookeeper_hosts} did not answer within "
                          f"{CALL_TIMEOUT_S:.0f} s ({exc!r})") from exc
    return client


async def _rabbitmq(settings: Settings) -> aio_pika.abc.AbstractConnection:
    try:
        return await aio_pika.connect(settings.amqp_url, timeout=CALL_TIMEOUT_S)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise Unreachable(f"cannot reach RabbitMQ at {mask_url(settings.amqp_url)}: "
                          f"{exc}") from exc


async def _children(client: aiozk.ZKClient, path: str) -> list[str]:
    try:
        return sorted(await client.get_children(path))
    except zk_exc.NoNode:
        return []


async def inspect_cluster(settings: Settings) -> ClusterFootprint:
    """The cluster's queues (with their depth and consumers), exchange and ZooKeeper tree,
    and the schedulers and workers registered there."""
    found = ClusterFootprint(settings.cluster, zookeeper_path=settings.zookeeper_chroot)
    connection = await _rabbitmq(settings)
    try:
        for name in queue_names(settings):
            channel = await connection.channel()  # a failed passive declare closes it
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelClosed:
                continue
            result = queue.declaration_result
            found.queues.append(QueueFootprint(name, result.message_count or 0,
                                               result.consumer_count or 0))
            await channel.close()
        channel = await connection.channel()
        try:
            await channel.declare_exchange(settings.dead_letter_exchange, passive=True)
            found.exchanges.append(settings.dead_letter_exchange)
            await channel.close()
        except ChannelClosed:
            pass
    finally:
        await connection.close()
    client = await _zookeeper(settings)
    try:
        root = settings.zookeeper_chroot
        found.zookeeper_exists = await client.exists(root)
        if found.zookeeper_exists:
            for name in await _children(client, root + ELECTION_PATH):
                try:
                    data = await client.get_data(f"{root}{ELECTION_PATH}/{name}")
                except zk_exc.NoNode:
                    continue
                found.schedulers.append((data or b"").decode(errors="replace") or name)
            found.workers = await _children(client, root + WORKERS_PATH)
    finally:
        await client.close()
    return found


async def purge_cluster(settings: Settings, footprint: ClusterFootprint) -> None:
    """Delete what ``inspect_cluster`` found: the queues (and their messages), the
    exchange and the ZooKeeper tree."""
    connection = await _rabbitmq(settings)
    try:
        channel = await connection.channel()
        for queue in footprint.queues:
            await channel.queue_delete(queue.name)
        for exchange in footprint.exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()
    if footprint.zookeeper_exists:
        client = await _zookeeper(settings)
        try:
            await client.deleteall(footprint.zookeeper_path)
        except zk_exc.NoNode:
            pass
        finally:
            await client.close()
