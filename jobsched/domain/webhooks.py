"""Webhooks (DESIGN.md "Webhooks"): the event types, the retry schedule of a delivery, what
an answer means for it, the body sent and the secrets that sign it.

Pure: no I/O; the clock and the random source are parameters, so the schedule is tested
without sleeping. The signature itself is the ``standardwebhooks`` package's (the worker
signs with it, receivers verify with it), not code of ours.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

__all__ = [
    "ANSWER_EXCERPT_BYTES",
    "EVENT_TYPES",
    "MAX_ATTEMPTS",
    "RETRY_SCHEDULE_S",
    "ROTATION_OVERLAP",
    "SECRET_PREFIX",
    "DeliveryState",
    "EventType",
    "Verdict",
    "delivery_body",
    "judge_answer",
    "new_secret",
    "next_attempt_at",
    "retry_delay",
]


class EventType(StrEnum):
    EXECUTION_SUCCEEDED = "execution.succeeded"
    EXECUTION_DEAD = "execution.dead"
    EXECUTION_CANCELLED = "execution.cancelled"
    JOB_COMPLETED = "job.completed"
    WORKFLOW_RUN_SUCCEEDED = "workflow_run.succeeded"
    WORKFLOW_RUN_FAILED = "workflow_run.failed"
    WORKFLOW_RUN_CANCELLED = "workflow_run.cancelled"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)


class DeliveryState(StrEnum):
    """``pending`` (never tried, or being tried) → ``succeeded``; or ``failed`` (an attempt
    failed, another is scheduled) → … → ``exhausted`` (the schedule ran out)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXHAUSTED = "exhausted"


#: Seconds before each attempt after the one before it failed: Standard Webhooks' schedule.
#: Entry n (0-based) is the wait before attempt n + 1, so the first attempt goes at once
#: and the tenth and last 24 h after the ninth: 3 days 3.5 hours from first to last.
RETRY_SCHEDULE_S: tuple[float, ...] = (
    0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
MAX_ATTEMPTS = len(RETRY_SCHEDULE_S)
#: Each wait is spread by up to this fraction either way, so that the deliveries of many
#: events that failed together (a receiver down) do not all come back in the same second.
JITTER = 0.1
#: After a rotation the previous secret signs too (a second signature) for this long.
ROTATION_OVERLAP = timedelta(hours=24)
#: How much of a receiver's answer is kept on the delivery, for people to read.
ANSWER_EXCERPT_BYTES = 1024
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def retry_delay(attempts_made: int, rand: Callable[[], float] = random.random) -> float | None:
    """Seconds from now until the next attempt, after ``attempts_made`` attempts that all
    failed; None once the schedule is over (the delivery is exhausted). ``rand()`` in
    [0, 1) places the wait within ±JITTER of the schedule's."""
    if attempts_made < 1:
        raise ValueError("attempts_made counts the attempts made so far, from 1")
    if attempts_made >= MAX_ATTEMPTS:
        return None
    delay = RETRY_SCHEDULE_S[attempts_made]
    return delay * (1 - JITTER + 2 * JITTER * rand())


def next_attempt_at(attempts_made: int, now: datetime,
                    rand: Callable[[], float] = random.random) -> datetime | None:
    """When the next attempt is due after ``attempts_made`` failed ones, or None."""
    delay = retry_delay(attempts_made, rand)
    return None if delay is None else now + timedelta(seconds=delay)


class Verdict(StrEnum):
    """What one attempt's answer means for its delivery."""

    DELIVERED = "succeeded"  # a 2xx
    RETRY = "failed"  # anything else (no answer in time, refused, 3xx, 4xx, 5xx)
    EXHAUSTED = "exhausted"  # failed, and the schedule is over
    GONE = "gone"  # 410: the receiver asks never to be called again; the endpoint is disabled


def judge_answer(status: int | None, attempts_made: int) -> Verdict:
    """``status`` is the HTTP status of the answer, None when none came (timeout, refused
    connection, egress rule). Redirects are not followed, so a 3xx is a failure."""
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    return Verdict.RETRY if attempts_made < MAX_ATTEMPTS else Verdict.EXHAUSTED


def rfc3339(moment: datetime) -> str:
    """UTC with microseconds and a ``Z``: the form every timestamp of a body takes."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def delivery_body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The JSON body POSTed: ``{"type", "timestamp", "data"}``. The same bytes on every
    attempt (only the signed ``webhook-timestamp`` header changes)."""
    return orjson.dumps({"type": event_type, "timestamp": rfc3339(occurred_at),
                         "data": data})


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: ``whsec_`` and 32 random bytes
    in base64 (the receiver keys its HMAC with the decoded bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def labels_match(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """An endpoint's label filter: the job's (or workflow's) labels hold every one of the
    endpoint's. The database applies the same rule (``labels @> wanted``); this is the
    reference the tests compare it with."""
    return all(labels.get(key) == value for key, value in wanted.items())
