"""HTTP runs: one request, 2xx is success; no redirects followed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp

from jobsched.domain.states import AttemptOutcome
from jobsched.worker.results import AttemptResult, truncate
from jobsched.worker.secrets import MissingSecret, SecretSource, mask


async def run_http(
    payload: dict[str, Any], timeout_s: float, output_limit: int, session: aiohttp.ClientSession,
    secrets: SecretSource | None = None,
) -> AttemptResult:
    try:
        headers, used = (secrets or SecretSource()).resolve(payload.get("headers") or {})
    except MissingSecret as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
    for name, value in headers.items():
        if any(c in value for c in "\r\n\x00"):  # a secret file must not inject headers
            return AttemptResult(AttemptOutcome.FAILED,
                                 error=f"header {name!r}: its value has a line break or NUL")
    result = await _request(payload, headers, timeout_s, output_limit, session)
    if not used:
        return result
    return replace(result, output=mask(result.output, used), error=mask(result.error, used))


async def _request(
    payload: dict[str, Any], headers: dict[str, str], timeout_s: float, output_limit: int,
    session: aiohttp.ClientSession,
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
            body = await response.content.read(output_limit + 1)
            output = truncate(body, output_limit)
            status = response.status
    except TimeoutError:
        return AttemptResult(AttemptOutcome.TIMED_OUT, error=f"timed out after {timeout_s:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return AttemptResult(AttemptOutcome.FAILED, error=f"request failed: {exc!r}"[:2000])
    if 200 <= status < 300:
        return AttemptResult(AttemptOutcome.SUCCEEDED, output=output)
    return AttemptResult(AttemptOutcome.FAILED, error=f"HTTP {status}", output=output)




class HttpRunner:
    """The worker's HTTP client for http runs: one connection pool, opened with the
    worker and closed with it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def run(self, payload: dict[str, Any], timeout_s: float, output_limit: int,
                  secrets: SecretSource | None = None) -> AttemptResult:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return await run_http(payload, timeout_s, output_limit, self._session, secrets)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
