"""Retry policy arithmetic with an injected random source."""

from __future__ import annotations

import pytest

from jobsched.domain.retry import RetryPolicy, retry_delay, should_retry


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.backoff_s, p.max_backoff_s, p.jitter) == (1, 2.0, 300.0, 0.2)
    assert not should_retry(p, 1)


def test_should_retry_counts_the_first_attempt() -> None:
    p = RetryPolicy(max_attempts=3)
    assert should_retry(p, 1)
    assert should_retry(p, 2)
    assert not should_retry(p, 3)
    assert not should_retry(p, 4)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (50, 300.0), (100_000, 300.0)],
)
def test_exponential_backoff_capped_without_jitter(attempt: int, expected: float) -> None:
    p = RetryPolicy(max_attempts=10, jitter=0.0)
    assert retry_delay(p, attempt, rand=lambda: 0.7) == expected


def test_jitter_only_shortens() -> None:
    p = RetryPolicy(max_attempts=5, backoff_s=10.0, max_backoff_s=300.0, jitter=0.2)
    assert retry_delay(p, 2, rand=lambda: 0.0) == pytest.approx(20.0)
    assert retry_delay(p, 2, rand=lambda: 0.5) == pytest.approx(18.0)
    assert retry_delay(p, 2, rand=lambda: 0.999999) == pytest.approx(16.0, abs=1e-4)
    assert retry_delay(p, 6, rand=lambda: 0.5) == pytest.approx(270.0)  # 300 cap, then jitter


def test_default_random_source_stays_in_bounds() -> None:
    p = RetryPolicy(max_attempts=5, backoff_s=4.0, jitter=0.5)
    for _ in range(200):
        assert 4.0 <= retry_delay(p, 2) <= 8.0


def test_zero_backoff() -> None:
    assert retry_delay(RetryPolicy(backoff_s=0.0), 5, rand=lambda: 0.3) == 0.0


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        retry_delay(RetryPolicy(), 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"backoff_s": -1.0},
        {"max_backoff_s": float("inf")},
        {"backoff_s": float("nan")},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.max_attempts = 3  # type: ignore[misc]
