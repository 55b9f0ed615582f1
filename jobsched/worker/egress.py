"""Outbound HTTP that keeps to the egress policy (jobsched.domain.egress): names are
resolved, refused addresses dropped, and only an allowed address is connected to, so a
name that resolves (or re-resolves: DNS rebinding) to a refused address never reaches it.
A literal address in the URL is checked before the request. No cookie is ever kept, and
no redirect is followed (each caller passes allow_redirects=False)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from jobsched.domain.egress import EgressPolicy


class EgressRefused(aiohttp.ClientConnectionError):
    """Every address of the host is refused by the egress policy; says which rule."""


class EgressResolver(AbstractResolver):
    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        allowed, reasons = [], []
        for result in found:
            reason = self.policy.refusal(result["host"])
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise EgressRefused(f"{host}: {'; '.join(dict.fromkeys(reasons))}")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def egress_session(policy: EgressPolicy, **options: Any) -> aiohttp.ClientSession:
    """A client session that connects only where ``policy`` allows and keeps no cookies."""
    connector = aiohttp.TCPConnector(resolver=EgressResolver(policy), limit=options.pop(
        "limit", 100))
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 trust_env=False, **options)
