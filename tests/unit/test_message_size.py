"""A queue message's body takes the memory of its text, not of the encoder's buffer: the
leader holds every body in flight until RabbitMQ confirms it."""

from __future__ import annotations

import tracemalloc
import uuid
from datetime import UTC, datetime

from jobsched.domain.priority import Priority
from jobsched.messages import AttemptMessage


def test_an_encoded_message_takes_about_its_length() -> None:
    message = AttemptMessage(uuid.uuid4(), uuid.uuid4(), 1, datetime.now(UTC), "python",
                             Priority.NORMAL)
    count = 500
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bodies = [message.encode() for _ in range(count)]
        per_body = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        if started:
            tracemalloc.stop()
    assert AttemptMessage.decode(bodies[0]) == message
    # The text is ~200 bytes; the bytes object's header and the list's slot add ~50.
    assert per_body < 2 * len(bodies[0]) + 64, (per_body, len(bodies[0]))
