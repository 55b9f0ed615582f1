"""Scheduling semantics through the API with real roles: preview, pause/resume/trigger,
PATCH, misfire and concurrency policies, bounds, cancellation of a running execution."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster

pytestmark = pytest.mark.timeout(120)

NOOP: dict[str, Any] = {"kind": "python", "python": {"function": "sample_tasks:noop"}}


@pytest.fixture
async def api(running_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, running_cluster.api, token=running_cluster.token)


def at(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


async def post(api: ApiClient, path: str, body: Any = None, expect: int = 200) -> Any:
    status, got, _ = await api.request("POST", path, json=body)
    assert status == expect, got
    return got


async def wait_for(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_preview_matches_next_fire(api: ApiClient) -> None:
    preview = await post(api, "/api/v1/schedules/preview", {
        "schedule": "30 2 * * *", "timezone": "Europe/Berlin",
        "start": "2026-03-28T00:00:00Z", "count": 3})
    assert [i["utc"] for i in preview["items"]] == [
        "2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    assert preview["items"][1]["local"] == "2026-03-29T03:00:00+02:00"
    job = await api.create({"name": "p", "schedule": "0 9 * * MON", "timezone": "Asia/Tokyo",
                            **NOOP})
    preview = await post(api, "/api/v1/schedules/preview",
                         {"schedule": "0 9 * * MON", "timezone": "Asia/Tokyo", "count": 1})
    assert preview["items"][0]["utc"] == job["next_fire_at"]
    status, problem, _ = await api.request("POST", "/api/v1/schedules/preview",
                                           json={"schedule": "0 0 31 2 *"})
    assert status == 422 and problem["errors"][0]["field"] == "schedule"


async def test_hashed_schedule_fires_when_the_preview_with_its_job_id_says(api: ApiClient) -> None:
    # "H * * * *": the api computes next_fire_at from the job's id; the preview given that
    # id shows the same time. Without an id the preview refuses, naming job_id.
    for i in range(3):
        job = await api.create({"name": f"hashed-{i}", "schedule": "H * * * *", **NOOP})
        preview = await post(api, "/api/v1/schedules/preview", {
            "schedule": "H * * * *", "job_id": job["id"], "start": job["created_at"],
            "count": 1})
        # (created_at is the database's clock, a few ms after the api computed the fire)
        assert preview["items"][0]["utc"] == job["next_fire_at"]
        await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    status, problem, _ = await api.request("POST", "/api/v1/schedules/preview",
                                           json={"schedule": "H * * * *"})
    assert status == 422 and problem["errors"][0]["field"] == "job_id"
    # The leader seeds it alike: every fire of an "H/5" seconds job is one the preview lists.
    job = await api.create({"name": "hashed-seconds", "schedule": "H/5 * * * * *", **NOOP})
    start = at(job["created_at"]) - timedelta(seconds=5)
    preview = await post(api, "/api/v1/schedules/preview", {
        "schedule": "H/5 * * * * *", "job_id": job["id"],
        "start": start.isoformat().replace("+00:00", "Z"), "count": 20})
    times = [i["utc"] for i in preview["items"]]
    assert job["next_fire_at"] in times[:3]
    fired = await wait_for(lambda: _at_least(api, job["id"], 3), timeout=30)
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert {e["scheduled_for"] for e in fired} <= set(times)


async def test_quartz_forms_through_the_api(api: ApiClient) -> None:
    # The 8th or the third Friday (Vixie's OR over Quartz's '#'), and a year field.
    job = await api.create({"name": "quartz", "schedule": "0 0 12 8 * 5#3 2027",
                            "timezone": "Europe/Berlin", **NOOP})
    assert job["next_fire_at"] == "2027-01-08T11:00:00Z"
    # Only past years: valid (it fired in 2020), but it has no fire left.
    status, problem, _ = await api.request("POST", "/api/v1/jobs", json={
        "name": "past", "schedule": "0 0 12 1 1 ? 2020", **NOOP})
    assert status == 422 and problem["errors"] == [
        {"field": "schedule", "reason": "the schedule has no fire time from now (or start_at) on"}]
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")


async def _at_least(api: ApiClient, job_id: str, n: int) -> list[dict[str, Any]] | None:
    items = await api.executions(job_id)
    return items if len(items) >= n else None


async def test_pause_and_resume_with_skip(api: ApiClient) -> None:
    job = await api.create({"name": "pr", "schedule": "* * * * * *", "misfire": "skip", **NOOP})
    await asyncio.sleep(1.5)
    paused = await post(api, f"/api/v1/jobs/{job['id']}/pause")
    assert paused["state"] == "paused"
    before = len(await api.executions(job["id"]))
    await asyncio.sleep(2.5)
    assert len(await api.executions(job["id"])) == before  # nothing fires while paused
    resumed = await post(api, f"/api/v1/jobs/{job['id']}/resume")
    assert resumed["state"] == "active"
    assert at(resumed["next_fire_at"]) > datetime.now(UTC) - timedelta(seconds=1)
    await asyncio.sleep(1.5)
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    items = await api.executions(job["id"])
    skipped = [e for e in items if e["state"] == "skipped"]
    assert len(skipped) == 1 and "skipped while paused" in skipped[0]["reason"]
    assert len([e for e in items if e["state"] == "succeeded"]) > before
    status, _, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/resume")
    assert status == 409  # a cancelled job stays cancelled


async def test_a_short_pause_is_late_not_missed(api: ApiClient) -> None:
    """Fires that fell due while paused and are still within misfire_threshold_s (5 s)
    when the job resumes are not misfires: each runs, whatever the policy (the cap of
    run_all, and coalescing, apply to older ones: tests/unit/test_firing.py)."""
    job = await api.create({"name": "ra", "schedule": "* * * * * *", "misfire": "run_all",
                            "max_catchup": 2, "start_at": _in(1.0), **NOOP})
    await post(api, f"/api/v1/jobs/{job['id']}/pause")
    await asyncio.sleep(3.2)
    await post(api, f"/api/v1/jobs/{job['id']}/resume")
    items = await wait_for(lambda: _settled(api, job["id"], 3))
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    first = sorted(items, key=lambda e: e["scheduled_for"])[:3]
    assert [e["state"] for e in first] == ["succeeded"] * 3


async def test_trigger_runs_once_now(api: ApiClient) -> None:
    job = await api.create({"name": "tr", "schedule": "0 0 1 1 *", **NOOP})
    execution = await post(api, f"/api/v1/jobs/{job['id']}/trigger", expect=201)
    assert execution["state"] == "queued" and execution["reason"] == "triggered"
    done = await api.wait_terminal(job["id"])
    assert done["id"] == execution["id"] and done["state"] == "succeeded"
    _status, got, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}")
    assert got["next_fire_at"] == job["next_fire_at"]  # the schedule itself is untouched


async def test_patch_reschedules_atomically(api: ApiClient) -> None:
    job = await api.create({"name": "pa", "schedule": "0 0 1 1 *", "labels": {"a": "1"}, **NOOP})
    status, renamed, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}",
                                           json={"name": "renamed", "labels": {"b": "2"}})
    assert status == 200 and renamed["name"] == "renamed"
    assert renamed["labels"] == {"a": "1", "b": "2"}  # merge patch
    assert renamed["next_fire_at"] == job["next_fire_at"]
    status, fast, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}",
                                        json={"schedule": "* * * * * *"})
    assert status == 200 and fast["schedule"] == "* * * * * *"
    assert at(fast["next_fire_at"]) - datetime.now(UTC) < timedelta(seconds=1.5)
    await wait_for(lambda: _settled(api, job["id"], 2))
    status, problem, _content_type = await api.request(
        "PATCH", f"/api/v1/jobs/{job['id']}", json={"schedule": "99 * * * *"})
    assert status == 422 and problem["errors"][0]["field"] == "schedule"
    status, problem, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}",
                                           json={"colour": "red"})
    assert status == 422 and problem["errors"][0]["field"] == "colour"
    status, _, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}", data=b"[")
    assert status == 400
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    status, _, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}", json={"name": "x"})
    assert status == 409


async def test_max_runs_and_end_at_complete_the_job(api: ApiClient) -> None:
    capped = await api.create({"name": "mr", "schedule": "* * * * * *", "max_runs": 3, **NOOP})
    ending = await api.create({"name": "ea", "schedule": "* * * * * *", "end_at": _in(2.2),
                               **NOOP})
    for job, most in ((capped, 3), (ending, 4)):
        async def completed(job: dict[str, Any] = job) -> bool:
            _, got, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}")
            return got["state"] == "completed"

        await wait_for(completed, timeout=10)
        items = await api.executions(job["id"])
        assert 1 <= len(items) <= most and all(e["state"] == "succeeded" for e in items)
    assert len(await api.executions(capped["id"])) == 3
    status, problem, _ = await api.request("POST", "/api/v1/jobs", json={
        "name": "never", "schedule": "0 0 1 1 *", "end_at": _in(5), **NOOP})
    assert status == 422 and problem["errors"][0]["field"] == "end_at"


async def test_forbid_skips_overlapping_fires(api: ApiClient) -> None:
    job = await api.create({"name": "fb", "schedule": "* * * * * *", "concurrency": "forbid",
                            "kind": "shell", "shell": {"argv": ["sleep", "2.2"]}})
    await asyncio.sleep(5.5)
    await post(api, f"/api/v1/jobs/{job['id']}/pause")
    items = await wait_for(lambda: _all_settled(api, job["id"]), timeout=10)
    skipped = [e for e in items if e["state"] == "skipped"]
    ran = [e for e in items if e["state"] == "succeeded"]
    assert skipped and ran
    assert all("concurrency=forbid" in e["reason"] or "holds its lock" in e["reason"]
               for e in skipped)
    _assert_no_overlap(ran)


async def test_replace_cancels_the_running_one(api: ApiClient) -> None:
    job = await api.create({"name": "rp", "schedule": "*/2 * * * * *", "concurrency": "replace",
                            "kind": "shell", "shell": {"argv": ["sleep", "30"]}})
    await asyncio.sleep(5.2)
    await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    items = await wait_for(lambda: _all_settled(api, job["id"]), timeout=10)
    assert len(items) >= 2
    replaced = [e for e in items if e["reason"] and "replaced" in e["reason"]]
    assert replaced, items
    assert all(e["state"] == "cancelled" for e in items)

    async def every_attempt_closed() -> bool:  # every process was stopped and recorded
        for execution in items:
            detail = await api.execution(execution["id"])
            if any(a["finished_at"] is None for a in detail["attempts"]):
                return False
        return True

    await wait_for(every_attempt_closed, timeout=10)


async def test_cancel_kills_a_running_execution_quickly(api: ApiClient) -> None:
    job = await api.create({"name": "kill", "schedule": "immediate", "kind": "shell",
                            "shell": {"argv": ["/bin/sh", "-c", "sleep 60 & sleep 60"]}})

    async def running() -> Any:
        items = await api.executions(job["id"])
        return items if items and items[0]["state"] == "running" else None

    (execution,) = await wait_for(running)
    started = time.monotonic()
    status, cancelled, _ = await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"

    async def stopped() -> Any:
        detail = await api.execution(execution["id"])
        attempt = detail["attempts"][0]
        return detail if attempt["finished_at"] else None

    detail = await wait_for(stopped, timeout=5)
    assert time.monotonic() - started < 2.0
    assert detail["state"] == "cancelled" and detail["attempts"][0]["outcome"] == "cancelled"


async def test_cluster_view(api: ApiClient) -> None:
    status, view, _ = await api.request("GET", "/api/v1/cluster")
    assert status == 200
    assert view["leader"]["instance"].startswith("scheduler") and view["leader"]["epoch"] >= 0
    assert [s["leader"] for s in view["schedulers"]] == [True]
    assert [w["instance"] for w in view["workers"]] == ["worker-1"]
    assert set(view["queues"]) == {"executions", "by_priority", "messages", "dead"}
    assert set(view["queues"]["messages"]) == {"high", "normal", "low"}
    assert set(view["queues"]["by_priority"]) == {"high", "normal", "low"}
    assert view["queues"]["executions"] == sum(view["queues"]["by_priority"].values())


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _settled(api: ApiClient, job_id: str, count: int) -> list[dict[str, Any]] | None:
    items = await api.executions(job_id)
    done = [e for e in items if e["state"] not in ("queued", "running", "retrying")]
    return items if len(done) >= count else None


async def _all_settled(api: ApiClient, job_id: str) -> list[dict[str, Any]] | None:
    items = await api.executions(job_id)
    active = [e for e in items if e["state"] in ("queued", "running", "retrying")]
    return items if items and not active else None


def _assert_no_overlap(executions: list[dict[str, Any]]) -> None:
    spans = sorted((at(e["started_at"]), at(e["finished_at"])) for e in executions)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans


async def test_history_limit_is_applied_by_the_leader(local_cluster: LocalCluster) -> None:
    local_cluster.start("scheduler", JOBSCHED_RETENTION_INTERVAL_S="1")
    local_cluster.start("worker", extra=("--import", "sample_tasks"))
    local_cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, local_cluster.api, token=local_cluster.token)
        job = await api.create({"name": "h", "schedule": "* * * * * *",
                                "history": {"succeeded": 2}, **NOOP})
        await asyncio.sleep(5.5)
        await post(api, f"/api/v1/jobs/{job['id']}/pause")
        # Runs fired ahead before the pause finish within about a second; then at least
        # one more retention pass (every 1 s here) must leave exactly two.

        async def two_left() -> Any:
            items = await api.executions(job["id"])
            return items if [e["state"] for e in items] == ["succeeded"] * 2 else None

        items = await wait_for(two_left, timeout=10)
    assert len(items) == 2


async def test_a_one_shot_job_whose_fire_was_missed_completes(api: ApiClient) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    job = await api.create({"name": "late", "schedule": past, "starting_deadline_s": 1,
                            **NOOP})

    async def completed() -> Any:
        _, got, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}")
        return got if got["state"] == "completed" else None

    # Completed by the leader's completion sweep, which runs every 30 s.
    got = await wait_for(completed, timeout=40)
    assert got["last_execution"]["state"] == "missed"
    assert "starting_deadline_s=1" in got["last_execution"]["reason"]
