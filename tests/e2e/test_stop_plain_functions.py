"""Cancel and timeout of plain-function (``def``) tasks, with real roles (issue 20 item 5).

A function run on the worker's thread runner cannot be interrupted: its attempt is
recorded cancelled or timed_out at once, and stays so when the thread later returns. One
registered with ``isolation="process"`` runs in a child process, which is killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
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


# @task(isolation="process"): the function runs in a child process of the worker, which a
# cancel or a timeout kills.


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


def _read_pid(pidfile: Path) -> int | None:
    text = pidfile.read_text() if pidfile.exists() else ""
    return int(text) if text else None


async def _child_pid(pidfile: Path) -> int:
    async def written() -> int | None:
        return _read_pid(pidfile)

    return await wait_for(written)


async def test_a_process_task_returns_its_value_from_a_child_of_the_worker(
        api: ApiClient, running_cluster: LocalCluster) -> None:
    job = await api.create({"name": "whoami", "schedule": "immediate", "kind": "python",
                            "python": {"function": "sample_tasks:whoami_in_process"}})
    done = await api.wait_terminal(job["id"])
    assert done["state"] == "succeeded", done
    value = orjson.loads(done["output"])
    worker = next(p for p in running_cluster.processes if p.roles == ("worker",))
    assert value["parent"] == worker.pid and value["pid"] != worker.pid, value
    assert value["attempt"] == 1


async def test_cancel_of_a_process_task_kills_its_process(api: ApiClient,
                                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = await api.create({"name": "proc-cancel", "schedule": "immediate", "kind": "python",
                            "python": {"function": "sample_tasks:doze_in_process",
                                       "args": {"seconds": 30, "pidfile": str(pidfile)}}})
    execution = await running_execution(api, job["id"])
    pid = await _child_pid(pidfile)
    assert _alive(pid)
    status, _, _ = await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 200
    detail = await attempt_closed(api, execution["id"])
    assert detail["state"] == "cancelled", detail
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "cancelled", attempt
    assert "process killed" in attempt["error"], attempt
    assert not _alive(pid)


async def test_timeout_of_a_process_task_kills_its_process(api: ApiClient,
                                                           tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = await api.create({"name": "proc-timeout", "schedule": "immediate", "kind": "python",
                            "timeout_s": 3,
                            "python": {"function": "sample_tasks:doze_in_process",
                                       "args": {"seconds": 30, "pidfile": str(pidfile)}}})
    execution = await running_execution(api, job["id"])
    pid = await _child_pid(pidfile)
    assert _alive(pid)
    detail = await attempt_closed(api, execution["id"], timeout=8)
    assert detail["state"] == "dead", detail  # no retry left, as for every kind
    attempt = detail["attempts"][0]
    assert attempt["outcome"] == "timed_out", attempt
    assert "timed out after 3s; process killed" in attempt["error"], attempt
    assert not _alive(pid)
