"""Retry policy: how many attempts an execution gets and how long to wait between them.

Pure functions; the random source is a parameter so that tests (and replays) can pin it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "retry_delay", "should_retry"]


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with downward jitter.

    ``max_attempts`` counts every try, the first one included, so the default of 1 means
    "never retry". ``jitter`` is the fraction by which a delay may be shortened at
    random: spreading retries of jobs that failed together (one dependency down) keeps
    them from stampeding back together, and shortening only (never lengthening) keeps
    ``max_backoff_s`` a true upper bound.
    """

    max_attempts: int = 1
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError("max_attempts must be an integer")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")


def should_retry(policy: RetryPolicy, attempt: int) -> bool:
    """Whether the attempt that just failed (1-based) leaves another one to make."""
    return attempt < policy.max_attempts


def retry_delay(
    policy: RetryPolicy, attempt: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the attempt that just failed (1-based) before the next one.

    The un-jittered delay is ``min(max_backoff_s, backoff_s * 2 ** (attempt - 1))``; the
    result is uniform in ``[delay * (1 - jitter), delay]`` (``rand()`` in ``[0, 1)``
    shortens it by ``delay * jitter * rand()``).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Cap the exponent: 2.0 ** 1024 overflows, and any base is capped long before that.
    delay = min(policy.max_backoff_s, policy.backoff_s * 2.0 ** min(attempt - 1, 1000))
    return delay - delay * policy.jitter * rand()
