"""The message a queue carries: which attempt of which execution to run. Nothing else
travels on RabbitMQ (PostgreSQL holds the rest), so a lost message is re-published from
the outbox and a repeated one loses its claim."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson


class MessageError(ValueError):
    """A queue message that is not a well-formed execution attempt."""


@dataclass(frozen=True, slots=True)
class AttemptMessage:
    execution_id: uuid.UUID
    job_id: uuid.UUID
    attempt: int

    @property
    def message_id(self) -> str:
        return f"{self.execution_id}:{self.attempt}"

    def encode(self) -> bytes:
        return orjson.dumps(
            {"execution_id": str(self.execution_id), "job_id": str(self.job_id),
             "attempt": self.attempt}
        )

    @classmethod
    def decode(cls, body: bytes) -> AttemptMessage:
        try:
            data = orjson.loads(body)
            attempt = data["attempt"]
            if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
                raise MessageError("attempt must be a positive integer")
            return cls(uuid.UUID(data["execution_id"]), uuid.UUID(data["job_id"]), attempt)
        except MessageError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed execution message: {exc!r}") from None
