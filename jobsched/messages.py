"""The message a queue carries: which attempt of which execution to run, and what a worker
needs before it claims it (when it is due, its kind, its priority band). Nothing else
travels on RabbitMQ (PostgreSQL holds the rest), so a lost message is re-published from
the outbox and a repeated one loses its claim.

A body is one attempt (a JSON object) or several of one band (a JSON array of such
objects, ``encode_many``): executions fired or re-published together travel in one message,
so RabbitMQ, the leader and the worker pay one message's cost for many (issue 18). A worker
acknowledges a message of several once every attempt in it is recorded; a redelivery of it
is harmless, as of any message, because a claim is taken once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from jobsched.domain.priority import Priority


class MessageError(ValueError):
    """A queue message that is not a well-formed execution attempt."""


@dataclass(frozen=True, slots=True)
class AttemptMessage:
    execution_id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    #: The fire time: a run published ahead of it (the leader's lookahead) is held until
    #: then, before it is claimed. None: run at once (messages of older versions).
    due: datetime | None = None
    #: The job's kind, so a shell run waits for a shell slot before its claim.
    kind: str | None = None
    priority: Priority = Priority.NORMAL

    @property
    def message_id(self) -> str:
        return f"{self.execution_id}:{self.attempt}"

    def encode(self) -> bytes:
        body = self._fields()
        # orjson returns its 4 KiB output buffer as the bytes object, however short the
        # text (orjson 3.13; ~200 bytes here): a body lives as long as its publish, a
        # leader has hundreds in flight, and a burst of them (a re-publish, a backlog)
        # left the leader's heap larger after every one. A copy of the exact size.
        return bytes(memoryview(orjson.dumps(body)))

    def _fields(self) -> dict[str, object]:
        body: dict[str, object] = {"execution_id": str(self.execution_id),
                                   "job_id": str(self.job_id), "attempt": self.attempt,
                                   "priority": self.priority.value}
        if self.due is not None:
            body["due"] = self.due.isoformat()
        if self.kind is not None:
            body["kind"] = self.kind
        return body

    @staticmethod
    def encode_many(messages: Sequence[AttemptMessage]) -> bytes:
        """One body for several attempts (a JSON array); a single one is encoded as itself,
        which any version of the worker reads."""
        if len(messages) == 1:
            return messages[0].encode()
        if not messages:
            raise ValueError("no attempts to encode")
        return bytes(memoryview(orjson.dumps([m._fields() for m in messages])))

    @classmethod
    def decode_many(cls, body: bytes) -> list[AttemptMessage]:
        """The attempts in a body, one or several; a body with any malformed attempt is
        malformed as a whole (it goes to the dead-letter queue unrun)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"malformed execution message: {exc!r}") from None
        if not isinstance(data, list):
            return [cls._from_fields(data)]
        if not data:
            raise MessageError("malformed execution message: an empty list of attempts")
        return [cls._from_fields(item) for item in data]

    @classmethod
    def decode(cls, body: bytes) -> AttemptMessage:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"malformed execution message: {exc!r}") from None
        return cls._from_fields(data)

    @classmethod
    def _from_fields(cls, data: object) -> AttemptMessage:
        try:
            if not isinstance(data, dict):
                raise MessageError("an attempt must be a JSON object")
            attempt = data["attempt"]
            if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
                raise MessageError("attempt must be a positive integer")
            due = data.get("due")
            when = datetime.fromisoformat(due) if due is not None else None
            if when is not None and when.tzinfo is None:
                raise MessageError("due must carry its UTC offset")
            kind = data.get("kind")
            if kind is not None and not isinstance(kind, str):
                raise MessageError("kind must be a string")
            return cls(uuid.UUID(data["execution_id"]), uuid.UUID(data["job_id"]), attempt,
                       when, kind, Priority.from_name(data.get("priority", "normal")))
        except MessageError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed execution message: {exc!r}") from None
