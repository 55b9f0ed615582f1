"""The HTTP API as a test or a benchmark sees it from the outside: raw statuses, bodies
and headers (unlike :class:`jobsched.client.Client`, which turns them into exceptions and
typed results), over one or several api processes.

With several base URLs, requests go round-robin and :meth:`ApiClient.create` skips an api
that does not answer: the chaos tests keep submitting while they kill api processes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

# The one terminal execution set (jobsched.domain.states), as strings, as the client has it.
from jobsched.client import TERMINAL_STATES

__all__ = ["TERMINAL_STATES", "ApiClient", "Reply", "UnexpectedReply"]


class UnexpectedReply(AssertionError):
    """The api answered something else than the call expects (a test failure, shown as
    one; the benchmark stops on it)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON; the text as it came if it is not JSON; None if empty
    headers: Mapping[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


class ApiClient:
    """``token`` goes out as ``Authorization: Bearer …`` unless a call sets that header
    itself; None sends none. ``timeout_s`` bounds each request (None: the session's)."""

    def __init__(self, session: aiohttp.ClientSession, urls: str | Sequence[str], *,
                 token: str | None = None, timeout_s: float | None = None) -> None:
        self.session = session
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no api URL")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        self._next = itertools.cycle(range(len(self.urls)))

    @property
    def base(self) -> str:
        """The first api's base URL (the only one, for most callers)."""
        return self.urls[0]

    def with_token(self, token: str | None) -> ApiClient:
        """The same apis and session as another caller (another namespace, another role)."""
        client = ApiClient(self.session, self.urls, token=token)
        client.timeout = self.timeout
        return client

    async def call(self, method: str, path: str, *, url: str | None = None,
                   **kwargs: Any) -> Reply:
        """One request to ``url`` (default: the next api in turn)."""
        base = url or self.urls[next(self._next)]
        if self.token:
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self.token}")
            kwargs["headers"] = headers
        if self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)
        async with self.session.request(method, base + path, **kwargs) as response:
            text = await response.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text  # not JSON: kept as it came, for the assertion to show
            return Reply(response.status, body, response.headers)

    async def request(self, method: str, path: str, *, url: str | None = None,
                      **kwargs: Any) -> tuple[int, Any, str]:
        """(status, body, content type) of :meth:`call`."""
        reply = await self.call(method, path, url=url, **kwargs)
        return reply.status, reply.body, reply.content_type

    async def create(self, job: dict[str, Any]) -> dict[str, Any]:
        """POST the job and return it. With several apis, one that fails (no answer, or not
        201) is skipped, up to twice round; with one, its first answer must be 201."""
        attempts = 1 if len(self.urls) == 1 else 2 * len(self.urls)
        last: Any = None
        for _ in range(attempts):
            try:
                reply = await self.call("POST", "/api/v1/jobs", json=job)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempts == 1:
                    raise
                last = exc
                continue
            if reply.status == 201:
                return dict(reply.body)
            last = (reply.status, reply.body)
        raise UnexpectedReply(f"job not created: {last}")

    async def _ok(self, path: str) -> Any:
        reply = await self.call("GET", path)
        if reply.status != 200:
            raise UnexpectedReply(f"GET {path}: {reply.status} {reply.body}")
        return reply.body

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._ok(f"/api/v1/jobs/{job_id}"))

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        """The job's executions, newest first (up to 500: the first page)."""
        return list((await self._ok(f"/api/v1/jobs/{job_id}/executions?limit=500"))["items"])

    async def execution(self, execution_id: str) -> dict[str, Any]:
        return dict(await self._ok(f"/api/v1/executions/{execution_id}"))

    async def wait_terminal(self, job_id: str, timeout: float = 20,
                            poll_s: float = 0.05) -> dict[str, Any]:
        """The job's first execution (the last of a newest-first page) once it reaches a
        terminal state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = await self.executions(job_id)
            if items and items[-1]["state"] in TERMINAL_STATES:
                return await self.execution(items[-1]["id"])
            await asyncio.sleep(poll_s)
        raise UnexpectedReply(f"job {job_id} did not finish: {await self.executions(job_id)}")
