"""Cancel and timeout of plain-function (``def``) tasks, with real roles (issue 20 item 5).

A function run on the worker's thread runner cannot be interrupted: its execution is
recorded cancelled or timed_out at once, and stays so when the thread later returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def api(running_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, running_cluster.api, token=running_cluster.token)


async def wait_for(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def running_execution(api: ApiClient, job_id: str) -> dict[str, Any]:
    async def running() -> Any:
        items = await api.executions(job_id)
        return items[0] if items and items[0]["state"] == "running" else None

    return await wait_for(running)


async def attempt_closed(api: ApiClient, execution_id: str, timeout: float = 5) -> Any:
    async def closed() -> Any:
        detail = await api.execution(execution_id)
        return detail if detail["attempts"] and detail["attempts"][0]["finished_at"] else None

    return await wait_for(closed, timeout)


async def test_cancel_of_a_running_thread_function_stays_cancelled(api: ApiClient) -> None:
    job = await api.create({"name": "doze-cancel", "schedule": "immediate", "kind": "python",
                            "python": {"function": "sample_tasks:doze",
                                       "args": {"seconds": 5}}})
    execution = await running_execution(api, job["id"])
    started = time.monotonic()
    status, cancelled, _ = await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    detail = await attempt_closed(api, execution["id"])
    assert time.monotonic() - started < 2.0
    assert detail["state"] == "cancelled", detail
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "cancelled", attempt
    assert "could not be interrupted" in (attempt["error"] or ""), attempt
    await asyncio.sleep(5.5)  # the thread has returned by now: nothing records it
    detail = await api.execution(execution["id"])
    assert detail["state"] == "cancelled", detail
    assert [a["outcome"] for a in detail["attempts"]] == ["cancelled"], detail


async def test_timeout_of_a_thread_function_is_timed_out(api: ApiClient) -> None:
    job = await api.create({"name": "doze-timeout", "schedule": "immediate", "kind": "python",
                            "timeout_s": 1,
                            "python": {"function": "sample_tasks:doze",
                                       "args": {"seconds": 5}}})
    execution = await running_execution(api, job["id"])
    detail = await attempt_closed(api, execution["id"], timeout=4)
    # The attempt timed out; with no retry left the execution is dead, as for every kind.
    assert detail["state"] == "dead", detail
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "timed_out", attempt
    assert "timed out after 1s" in attempt["error"], attempt
    assert "could not be interrupted" in attempt["error"], attempt
    await asyncio.sleep(5)  # the thread has returned by now: nothing records it
    detail = await api.execution(execution["id"])
    assert detail["state"] == "dead", detail
    assert [a["outcome"] for a in detail["attempts"]] == ["timed_out"], detail
