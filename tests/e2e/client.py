"""A small HTTP client for the e2e tests (aiohttp, no jobsched code)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "dead", "skipped", "missed"}


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
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
