"""A small HTTP client for the e2e tests (aiohttp, no jobsched code).

It sends ``Authorization: Bearer <token>``: by default the admin token of the cluster whose
api it talks to (``LocalCluster`` registers it in ``CLUSTER_TOKENS``), or the ``token``
given (``None``: no header at all).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "dead", "skipped", "missed"}
# api base URL -> the admin token of its cluster
CLUSTER_TOKENS: dict[str, str] = {}
_CLUSTER_TOKEN: Any = object()


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str,
                 token: str | None = _CLUSTER_TOKEN) -> None:
        self.session = session
        self.base = base
        self.token = CLUSTER_TOKENS.get(base) if token is _CLUSTER_TOKEN else token

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
        if self.token:
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self.token}")
            kwargs["headers"] = headers
        async with self.session.request(method, self.base + path, **kwargs) as response:
            text = await response.text()
            body = await response.json(content_type=None) if text else None
            return response.status, body, response.headers.get("Content-Type", "")

    async def create(self, job: dict[str, Any]) -> dict[str, Any]:
        status, body, _ = await self.request("POST", "/api/v1/jobs", json=job)
        assert status == 201, body
        return body

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        status, body, _ = await self.request("GET", f"/api/v1/jobs/{job_id}/executions?limit=500")
        assert status == 200, body
        return body["items"]

    async def execution(self, execution_id: str) -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/api/v1/executions/{execution_id}")
        assert status == 200, body
        return body

    async def wait_terminal(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        """The job's first execution once it reaches a terminal state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = await self.executions(job_id)
            if items and items[-1]["state"] in TERMINAL:
                return await self.execution(items[-1]["id"])
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {await self.executions(job_id)}")
