"""What one attempt of any job kind ends in: every run ends in an AttemptResult, never
raises. Output is masked before it is cut to its limit, so a secret value that straddles
the limit never leaves its first characters behind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jobsched.domain.states import AttemptOutcome
from jobsched.worker.secrets import mask


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None
    result: str | None = None  # a workflow node's return value, as JSON text
    # When a plain function queued for a thread was really called (time.time()); None for
    # every other run, which starts when the worker begins it.
    began: float | None = None


def render_output(data: bytes, total: int, limit: int, secrets: Sequence[str]) -> str:
    """The output as recorded: ``data`` is what was captured of ``total`` bytes (at least
    ``limit`` plus the longest secret, when there were that many); every secret in it is
    masked first, then the text is cut to ``limit`` bytes and the cut is noted."""
    text = mask(data.decode("utf-8", errors="replace"), secrets) or ""
    encoded = text.encode()
    if total <= len(data) and (total <= limit or len(encoded) <= limit):
        return text
    kept = encoded[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n[output truncated: {max(total - limit, 0)} more bytes]"
