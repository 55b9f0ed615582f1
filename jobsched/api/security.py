"""The api's gate: bearer-token authentication, a limit on failed authentications per
client address, the per-token rate limit and the header-count limit.

Every ``/api/`` request passes here before its handler; ``/healthz``, ``/readyz`` and the
dashboard's static files do not. The handler finds the caller as ``principal(request)``.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from jobsched.api.dashboard import DASHBOARD_CSP, is_dashboard
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
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# An IPv6 host usually holds a whole /64: counting per address would let one host use
# 2**64 of them.
IPV6_CLIENT_PREFIX = 64


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

    def cached(self, token: str) -> Principal | None:
        """The token's principal if a lookup within ``cache_s`` found it, else None."""
        cached = self._cache.get(token_digest(token))
        if cached is not None and self.clock() - cached[0] < self.cache_s:
            return cached[1]
        return None

    async def authenticate(self, token: str) -> Principal | None:
        found = self.cached(token)
        if found is not None:
            return found
        digest = token_digest(token)
        now = self.clock()
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


def trusted_networks(proxies: Sequence[str]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def client_address(request: web.Request, trusted: Sequence[IpNetwork]) -> str:
    """The address a request came from, as the key of its failed-authentication bucket.

    The peer of the connection, unless that peer is a trusted proxy: then the
    ``X-Forwarded-For`` list is read from the right (each proxy appends the address it
    was connected from, so the entries on the left are whatever the client wrote) and the
    first address that is not a trusted proxy is the client. An entry that is not an
    address stops the walk at the last trusted one, so made-up entries cannot mint new
    keys. IPv6 clients are counted per /64.
    """
    address = _ip(request.remote)
    if address is None:
        return "unknown"
    if trusted and _in(address, trusted):
        hops = ",".join(request.headers.getall("X-Forwarded-For", []))
        for hop in reversed(hops.split(",")):
            forwarded = _ip(hop.strip())
            if forwarded is None:
                break
            address = forwarded
            if not _in(address, trusted):
                break
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        networks: Sequence[IpNetwork]) -> bool:
    return any(address in network for network in networks)


#: Everything that is not the dashboard is data: it loads nothing and is framed by no one.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response (on_response_prepare): the Content-Security-Policy of what it
    is, no framing (X-Frame-Options for browsers that predate frame-ancestors), no MIME
    sniffing, and no Referer (a URL may hold a job id)."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy",
                       DASHBOARD_CSP if is_dashboard(request.path) else API_CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")


def unauthorized(detail: str) -> web.Response:
    return problem(401, "Unauthorized", detail,
                   headers={"WWW-Authenticate": 'Bearer realm="jobsched"'})


def too_many_failures(wait: int) -> web.Response:
    return problem(429, "Too many failed authentications",
                   f"too many requests from this address carried a malformed or unknown "
                   f"token; retry in {wait}s", headers={"Retry-After": str(wait)})


def security_middleware(settings: Settings, authenticator: Authenticator | None,
                        limiter: RateLimiter,
                        unavailable: tuple[type[BaseException], ...] = (),
                        clock: Callable[[], float] = time.monotonic,
                        failures: RateLimiter | None = None) -> Middleware:
    """Authenticate, then rate-limit per token; answers 401, 429 or 431 itself, and 503
    when the token cannot be looked up (``unavailable``: the adapters' errors for it).

    ``failures`` counts malformed and unknown tokens per client address: once an address
    has spent its bucket, its requests are answered 429 *before* their token is looked up
    (only a token this process already knows still passes), so guessing costs the
    database one lookup per ``1 / auth_failures_per_s`` seconds per address, not one per
    request."""
    if not settings.auth_enabled:
        log.warning("authentication is DISABLED (auth_enabled=false): every request acts "
                    "as an admin of namespace 'default'; never run this way in production")
    failures = failures or RateLimiter(settings.auth_failures_per_s,
                                       settings.auth_failure_burst)
    trusted = trusted_networks(settings.trusted_proxies)

    def refuse(client: str, detail: str) -> web.Response:
        failures.retry_after(client, clock())
        return unauthorized(detail)

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
        found = authenticator.cached(token) if token is not None else None
        if found is None:
            client = client_address(request, trusted)
            wait = failures.blocked_for(client, clock())
            if wait:
                return too_many_failures(wait)
            if token is None:
                return refuse(client, "the Authorization header is not 'Bearer <token>' "
                                      "with a jobsched token")
            try:
                found = await authenticator.authenticate(token)
            except unavailable as exc:
                log.warning("token lookup failed: %r", exc)
                return problem(503, "Service unavailable", "cannot check the token now; "
                               "retry", headers={"Retry-After": "1"})
            if found is None:
                return refuse(client, "the token is unknown, revoked or expired")
        wait = limiter.retry_after(found.token_id, clock())
        if wait:
            return problem(429, "Too many requests",
                           f"this token's limit is {settings.rate_limit_per_s:g} requests/s "
                           f"(bursts of {settings.rate_limit_burst}); retry in {wait}s",
                           headers={"Retry-After": str(wait)})
        request[PRINCIPAL] = found
        return await handler(request)

    return gate
