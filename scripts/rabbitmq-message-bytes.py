"""What one jobsched message costs RabbitMQ (docs/deploy.md, "Sizing").

    python scripts/rabbitmq-message-bytes.py [N] [--amqp-url URL] [--quorum-dir DIR]

Publishes N (default 20,000) messages shaped as the leader sends them (an execution
attempt with a due time and kind, persistent, with a message id) to a quorum queue of its
own, with publisher confirms and 500 in flight; then prints the body size, what
`rabbitmqctl list_queues` reports for the queue (messages, memory) and how much the
node's quorum directory grew; then deletes the queue. Needs `rabbitmqctl` (as a user who
may run it) and read access to the quorum directory. The directory holds every quorum
queue of the node: other traffic meanwhile makes the disk figure an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aio_pika

from jobsched.messages import AttemptMessage

DEFAULT_QUORUM_DIR = "/var/lib/rabbitmq/mnesia/rabbit@localhost/quorum"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _queue_row(name: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages", "memory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next((line.split() for line in out.splitlines() if line.startswith(name)), [])


def _message() -> AttemptMessage:
    return AttemptMessage(uuid.uuid4(), uuid.uuid4(), 1, datetime.now(UTC), "python")


async def measure(count: int, amqp_url: str, quorum_dir: Path) -> None:
    name = f"jobsched-sizing-{os.getpid()}"
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        before = _dir_bytes(quorum_dir)
        in_flight = asyncio.Semaphore(500)

        async def publish() -> None:
            message = _message()
            async with in_flight:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        message.encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=message.message_id,
                    ),
                    routing_key=name,
                )

        started = time.perf_counter()
        await asyncio.gather(*(publish() for _ in range(count)))
        elapsed = time.perf_counter() - started
        # The queue's stats are emitted every few seconds: wait until they count them all.
        row: list[str] = []
        for _ in range(60):
            row = _queue_row(name)
            if len(row) == 3 and int(row[1]) >= count:
                break
            await asyncio.sleep(1)
        grown = _dir_bytes(quorum_dir) - before
        print(f"published {count} in {elapsed:.1f} s ({count / elapsed:.0f}/s)")
        print(f"body: {len(_message().encode())} B")
        if len(row) == 3 and int(row[1]) > 0:
            print(
                f"queue: {row[1]} messages, {int(row[2]):,} B memory "
                f"= {int(row[2]) / int(row[1]):.0f} B per message"
            )
        print(
            f"quorum directory grew {grown:,} B = {grown / count:.0f} B per message "
            "(shared with every quorum queue of the node: other traffic adds to it, and a "
            "compaction meanwhile can even make it negative)"
        )
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=20_000)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--quorum-dir", type=Path, default=Path(DEFAULT_QUORUM_DIR))
    args = parser.parse_args()
    asyncio.run(measure(args.count, args.amqp_url, args.quorum_dir))


if __name__ == "__main__":
    main()
