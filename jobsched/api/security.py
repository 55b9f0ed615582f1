"""The api's gate: bearer-token authentication, per-token rate limit, header-count limit.

Every ``/api/`` request passes here before its handler; ``/healthz``, ``/readyz`` and the
dashboard's static files do not. The handler finds the caller as ``principal(request)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from jobsched.api.problems import problem
from jobsched.domain.auth import (
    ANONYMOUS_ADMIN,
    Principal,
    RateLimiter,
    parse_bearer,
    token_digest,
)
from jobsched.ports import TokenRepository
from jobsched.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)
PROTECTED_PREFIX = "/api/"
CACHE_LIMIT = 10_000


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


class Authenticator:
    """Looks tokens up by digest, remembering each answer for ``cache_s`` so that a busy
    client costs one query per period, not one per request. Unknown tokens are not
    remembered: each costs one indexed lookup."""

    def __init__(self, tokens: TokenRepository, cache_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = tokens
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[bytes, tuple[float, Principal]] = {}

    async def authenticate(self, token: str) -> Principal | None:
        digest = token_digest(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        row = await self.tokens.authenticate(digest)
        if row is None:
            self._cache.pop(digest, None)
            return None
        found = Principal(row["id"], row["namespace"], row["role"], row["name"])
        if self.cache_s > 0:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (now, found)
        return found


def unauthorized(detail: str) -> web.Response:
    return problem(401, "Unauthorized", detail,
                   headers={"WWW-Authenticate": 'Bearer realm="jobsched"'})


def security_middleware(settings: Settings, authenticator: Authenticator | None,
                        limiter: RateLimiter,
                        unavailable: tuple[type[BaseException], ...] = (),
                        clock: Callable[[], float] = time.monotonic) -> Middleware:
    """Authenticate, then rate-limit per token; answers 401, 429 or 431 itself, and 503
    when the token cannot be looked up (``unavailable``: the adapters' errors for it)."""
    if not settings.auth_enabled:
        log.warning("authentication is DISABLED (auth_enabled=false): every request acts "
                    "as an admin of namespace 'default'; never run this way in production")

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        if len(request.headers) > settings.max_request_headers:
            return problem(431, "Request header fields too large",
                           f"at most {settings.max_request_headers} headers are accepted")
        if not settings.auth_enabled or authenticator is None:
            request[PRINCIPAL] = ANONYMOUS_ADMIN
            return await handler(request)
        header = request.headers.getall("Authorization", [])
        if not header:
            return unauthorized("this request needs 'Authorization: Bearer <token>'")
        token = parse_bearer(header[0]) if len(header) == 1 else None
        if token is None:
            return unauthorized("the Authorization header is not 'Bearer <token>' with a "
                                "jobsched token")
        try:
            found = await authenticator.authenticate(token)
        except unavailable as exc:
            log.warning("token lookup failed: %r", exc)
            return problem(503, "Service unavailable", "cannot check the token now; retry",
                           headers={"Retry-After": "1"})
        if found is None:
            return unauthorized("the token is unknown, revoked or expired")
        wait = limiter.retry_after(found.token_id, clock())
        if wait:
            return problem(429, "Too many requests",
                           f"this token's limit is {settings.rate_limit_per_s:g} requests/s "
                           f"(bursts of {settings.rate_limit_burst}); retry in {wait}s",
                           headers={"Retry-After": str(wait)})
        request[PRINCIPAL] = found
        return await handler(request)

    return gate
