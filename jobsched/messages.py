"""The message a queue carries: which attempt of which execution to run, and what a worker
needs before it claims it (when it is due, its kind, its priority band). Nothing else
travels on RabbitMQ (PostgreSQL holds the rest), so a lost message is re-published from
the outbox and a repeated one loses its claim."""

from __future__ import annotations

import uuid
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
        body: dict[str, object] = {"execution_id": str(self.execution_id),
                                   "job_id": str(self.job_id), "attempt": self.attempt,
                                   "priority": self.priority.value}
        if self.due is not None:
            body["due"] = self.due.isoformat()
        if self.kind is not None:
            body["kind"] = self.kind
        # orjson returns its 4 KiB output buffer as the bytes object, however short the
        # text (orjson 3.13; ~200 bytes here): a body lives as long as its publish, a
        # leader has hundreds in flight, and a burst of them (a re-publish, a backlog)
        # left the leader's heap larger after every one. A copy of the exact size.
        return bytes(memoryview(orjson.dumps(body)))

    @classmethod
    def decode(cls, body: bytes) -> AttemptMessage:
        try:
            data = orjson.loads(body)
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
                       when, kind, Priority(data.get("priority", "normal")))
        except MessageError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed execution message: {exc!r}") from None
