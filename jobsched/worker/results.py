"""What one attempt of any job kind ends in: every run ends in an AttemptResult, never
raises."""

from __future__ import annotations

from dataclasses import dataclass

from jobsched.domain.states import AttemptOutcome


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None
    result: str | None = None  # a workflow node's return value, as JSON text


def truncate(data: bytes, limit: int) -> str:
    if len(data) <= limit:
        return data.decode("utf-8", errors="replace")
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n[output truncated: {len(data) - limit} more bytes]"


