"""HTTP runs: one request, 2xx is success; no redirects followed, no cookies kept, and only
addresses the egress policy allows are connected to (jobsched.worker.egress)."""

from __future__ import annotations

from typing import Any

import aiohttp

from jobsched.domain.egress import EgressPolicy
from jobsched.domain.states import AttemptOutcome
from jobsched.worker.egress import EgressRefused, egress_session
from jobsched.worker.results import AttemptResult, render_output
from jobsched.worker.secrets import MissingSecret, RunSecrets, longest, mask_bounded

MAX_ERROR_CHARS = 2000


async def run_http(
    payload: dict[str, Any], timeout_s: float, output_limit: int, session: aiohttp.ClientSession,
    secrets: RunSecrets, policy: EgressPolicy,
) -> AttemptResult:
    try:
        headers = await secrets.resolve(payload.get("headers") or {})
    except MissingSecret as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    for name, value in headers.items():
        if any(c in value for c in "\r\n\x00"):  # a secret must not inject headers
            return AttemptResult(AttemptOutcome.FAILED,
                                 error=f"header {name!r}: its value has a line break or NUL")
    # A literal address is connected to without resolving: check it here. A host name is
    # checked on each address it resolves to (egress_session's resolver).
    refused = policy.literal_refusal(payload["url"])
    if refused is not None:
        return AttemptResult(AttemptOutcome.FAILED, error=f"egress refused: {refused}")
    result = await _request(payload, headers, timeout_s, output_limit, session, secrets.masked)
    return AttemptResult(result.outcome, result.exit_code,
                         mask_bounded(result.error, secrets.masked, MAX_ERROR_CHARS),
                         result.output)


async def _request(
    payload: dict[str, Any], headers: dict[str, str], timeout_s: float, output_limit: int,
    session: aiohttp.ClientSession, masked: list[str],
) -> AttemptResult:
    try:
        async with session.request(
            payload.get("method", "GET"),
            payload["url"],
            headers=headers or None,
            data=payload.get("body"),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            body, total = await _read_body(response, output_limit + longest(masked))
            output = render_output(body, total, output_limit, masked)
            status = response.status
    except TimeoutError:
        return AttemptResult(AttemptOutcome.TIMED_OUT, error=f"timed out after {timeout_s:g}s")
    except EgressRefused as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=f"egress refused: {exc}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=f"request failed: {exc!r}")
    if 200 <= status < 300:
        return AttemptResult(AttemptOutcome.SUCCEEDED, output=output)
    return AttemptResult(AttemptOutcome.FAILED, error=f"HTTP {status}", output=output)


async def _read_body(response: aiohttp.ClientResponse, keep: int) -> tuple[bytes, int]:
    """Up to ``keep`` bytes of the body (past the output limit, as much as the longest
    secret: masked whole, then cut), and the body's size as far as it is known: the rest of
    a long body is not downloaded."""
    kept = bytearray()
    seen = 0
    async for chunk in response.content.iter_chunked(65_536):
        seen += len(chunk)
        kept += chunk[:keep - len(kept)]
        if seen > keep:
            break
    if response.content.at_eof():
        return bytes(kept), seen
    return bytes(kept), max(response.content_length or 0, seen + 1)


class HttpRunner:
    """The worker's HTTP client for http runs: one connection pool that keeps to the egress
    policy and keeps no cookies (so nothing of one run's session reaches another's),
    opened with the worker and closed with it."""

    def __init__(self, policy: EgressPolicy | None = None) -> None:
        self.policy = policy or EgressPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def run(self, payload: dict[str, Any], timeout_s: float, output_limit: int,
                  secrets: RunSecrets) -> AttemptResult:
        if self._session is None:
            self._session = egress_session(self.policy)
        return await run_http(payload, timeout_s, output_limit, self._session, secrets,
                              self.policy)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
