"""Who may do what: API tokens, their namespace and role, and the rules that apply to them.

Pure: no I/O and no clock of its own, so every rule is tested without a server.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "editor", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "editor", "viewer")
# What a route needs: "read" (any role), "write" (editor or admin) or "admin".
Access = Literal["read", "write", "admin"]

TOKEN_PREFIX = "jsk_"
TOKEN_BYTES = 32  # 256 random bits: guessing is hopeless, so a fast hash is enough
TOKEN_RE = re.compile(r"^jsk_[A-Za-z0-9_-]{43}$")
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request, as its token says."""

    token_id: uuid.UUID | None
    namespace: str
    role: Role
    name: str | None = None

    @property
    def can_write(self) -> bool:
        return self.role in ("admin", "editor")


# Auth disabled (local development only): everyone is an admin of the default namespace.
ANONYMOUS_ADMIN = Principal(None, DEFAULT_NAMESPACE, "admin", "auth disabled")


def new_token() -> tuple[str, bytes]:
    """A fresh token (shown once) and the digest that is stored instead of it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    """SHA-256 of the token. The token is 256 random bits, not a password a person chose:
    no dictionary or brute force reaches it, so a slow KDF would only add latency to every
    request, while an unsalted digest can be looked up by a unique index."""
    return hashlib.sha256(token.encode()).digest()


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None if malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_RE.fullmatch(token):
        return None
    return token


class Forbidden(Exception):
    """The caller is known but may not do this; ``reason`` says why, ``field`` what."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def check_access(principal: Principal, access: Access) -> None:
    if access != "read" and not principal.can_write:
        raise Forbidden(f"role '{principal.role}' is read-only")
    if access == "admin" and principal.role != "admin":
        raise Forbidden(f"role '{principal.role}' may not do this: it needs an admin token")


def check_kind(principal: Principal, kind: str, disabled_kinds: tuple[str, ...]) -> None:
    """Creating, changing or running a job of ``kind``: disabled kinds are refused to
    everyone, and a shell job (arbitrary commands on the workers) needs an admin."""
    if kind in disabled_kinds:
        raise Forbidden(f"job kind '{kind}' is disabled on this deployment", "kind")
    if kind == "shell" and principal.role != "admin":
        raise Forbidden("only an admin token may create or change shell jobs", "kind")


@dataclass
class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once. The clock is passed in."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def take(self, now: float) -> float:
        """Spend one request: 0.0 if allowed, else the seconds until one is."""
        wait = self.wait(now)
        if wait == 0:
            self.tokens -= 1
        return wait

    def wait(self, now: float) -> float:
        """The seconds until a request would be allowed (0.0: now), spending nothing."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key (an API token, a client address), held by one api process
    (N processes behind a balancer allow up to N times the rate). Idle buckets are dropped
    after ``idle_s``; beyond ``max_keys`` the least recently used is dropped, so many keys
    (addresses of a botnet) cost bounded memory."""

    def __init__(self, rate: float, burst: int, idle_s: float = 600.0,
                 max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.idle_s = idle_s
        self.max_keys = max_keys
        self._buckets: dict[object, TokenBucket] = {}
        self._swept = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, key: object, now: float) -> int:
        """Spend one request of ``key``: 0 if it may go ahead, else whole seconds to wait
        (for Retry-After)."""
        if not self.enabled:
            return 0
        return _whole_seconds(self._bucket(key, now).take(now))

    def blocked_for(self, key: object, now: float) -> int:
        """Whole seconds until ``key`` may spend a request (0: it may now), spending none:
        the check before an expensive step that only its failure pays for."""
        if not self.enabled or key not in self._buckets:
            return 0
        return _whole_seconds(self._bucket(key, now).wait(now))

    def _bucket(self, key: object, now: float) -> TokenBucket:
        if now - self._swept > self.idle_s:
            self._sweep(now)
        bucket = self._buckets.pop(key, None)  # re-inserted last: the dict is LRU-ordered
        if bucket is None:
            bucket = TokenBucket(self.rate, float(self.burst))
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = bucket
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [k for k, b in self._buckets.items() if now - b.updated > self.idle_s]:
            del self._buckets[key]


def _whole_seconds(wait: float) -> int:
    return 0 if wait == 0 else max(1, math.ceil(wait))
