"""Every class of bad request gets a 4xx problem+json naming the field; the api keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster

GOOD: dict[str, Any] = {
    "name": "ok", "schedule": "0 9 * * *", "kind": "shell",
    "shell": {"argv": ["/bin/true"]},
}


@pytest.fixture
async def api(running_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, running_cluster.api, token=running_cluster.token)


def with_(**changes: Any) -> dict[str, Any]:
    job = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value
    return job


CASES = [
    # (body, expected status, field the error must name, words the reason must contain)
    (b'{"name": "x",', 400, "body", "malformed JSON"),
    (b"", 422, "body", ""),
    (b"[1, 2]", 422, "body", ""),
    (with_(color="red"), 422, "color", "unknown field"),
    (with_(name=5), 422, "name", "must be a string"),
    (with_(name=None), 422, "name", "required"),
    (with_(timeout_s="10"), 422, "timeout_s", "must be a number"),
    (with_(timeout_s=-1), 422, "timeout_s", "greater than 0"),
    (with_(schedule="61 * * * *"), 422, "schedule", "minute"),
    (with_(schedule="0 0 30 2 *"), 422, "schedule", "never"),
    (with_(schedule="every day"), 422, "schedule", ""),
    (with_(schedule="@every 0s"), 422, "schedule", ""),
    (with_(schedule="2026-01-01T09:00:00"), 422, "schedule", "offset"),
    (with_(timezone="Mars/Olympus_Mons"), 422, "timezone", "time zone"),
    (with_(shell={"argv": "echo hi"}), 422, "shell.argv", "list"),
    (with_(shell={"argv": ["echo", 3]}), 422, "shell.argv[1]", "must be a string"),
    (with_(shell={"argv": []}), 422, "shell.argv", "at least 1"),
    (with_(shell={"argv": ["a\x00b"]}), 422, "shell.argv[0]", "pattern"),
    (with_(shell=None), 422, "shell", "needs a 'shell'"),
    (with_(http={"url": "http://x"}), 422, "http", "only 'shell'"),
    (with_(kind="ftp"), 422, "kind", "'shell', 'http' or 'python'"),
    (with_(kind="http", shell=None, http={"url": "ftp://x"}), 422, "http.url", "pattern"),
    (with_(kind="python", shell=None, python={"function": "os.system"}), 422,
     "python.function", "module.path:function"),
    (with_(retry={"max_attempts": 0}), 422, "retry.max_attempts", "greater than or equal"),
    (with_(retry={"tries": 3}), 422, "retry.tries", "unknown field"),
    (with_(labels={"bad key!": "x"}), 422, "labels.bad key!.[key]", "pattern"),
    (with_(priority="urgent"), 422, "priority", "'high', 'normal' or 'low'"),
    (with_(priorty="high"), 422, "priorty", "unknown field"),
]


@pytest.mark.parametrize(("body", "status", "field", "reason"), CASES)
async def test_bad_job_is_a_problem(api: ApiClient, body: Any, status: int, field: str,
                                    reason: str) -> None:
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    got, problem, content_type = await api.request("POST", "/api/v1/jobs", **kwargs)
    assert got == status, problem
    assert content_type == "application/problem+json"
    assert problem["status"] == status and problem["title"]
    fields = {e["field"]: e["reason"] for e in problem.get("errors", [])}
    assert field in fields, problem
    assert reason.lower() in fields[field].lower(), problem


async def test_body_over_the_limit_is_413(api: ApiClient) -> None:
    huge = with_(shell={"argv": ["x" * 4000] * 300})
    status, problem, content_type = await api.request("POST", "/api/v1/jobs", json=huge)
    assert status == 413 and content_type == "application/problem+json"
    assert "1048576" in problem["detail"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/jobs/not-a-uuid", 404),
    ("GET", "/api/v1/jobs/00000000-0000-0000-0000-000000000000", 404),
    ("DELETE", "/api/v1/jobs/00000000-0000-0000-0000-000000000000", 404),
    ("GET", "/api/v1/executions/00000000-0000-0000-0000-000000000000", 404),
    ("GET", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/executions", 404),
    ("GET", "/api/v1/nothing", 404),
    ("PUT", "/api/v1/jobs", 405),
    ("GET", "/api/v1/jobs?limit=0", 422),
    ("GET", "/api/v1/jobs?limit=abc", 422),
    ("GET", "/api/v1/jobs?state=sleeping", 422),
    ("GET", "/api/v1/jobs?label=novalue", 422),
    ("GET", "/api/v1/jobs?bogus=1", 422),
    ("GET", "/api/v1/jobs?cursor=%%%", 400),
    ("GET", "/api/v1/jobs?cursor=bm9wZQ", 400),
])
async def test_bad_requests_are_problems(api: ApiClient, method: str, path: str,
                                         status: int) -> None:
    got, problem, content_type = await api.request(method, path)
    assert got == status, problem
    assert content_type == "application/problem+json"
    assert problem["status"] == status


async def test_api_still_serves_after_bad_input(api: ApiClient) -> None:
    for body in (b"\xff\xfe", b"{" * 10_000, b'{"name": "' + b"\\ud800" + b'"}'):
        status, _, content_type = await api.request("POST", "/api/v1/jobs", data=body)
        assert 400 <= status < 500 and content_type == "application/problem+json"
    created = await api.create(GOOD)
    status, _, _ = await api.request("GET", f"/api/v1/jobs/{created['id']}")
    assert status == 200


@pytest.mark.parametrize(("patch", "field"), [
    ({"": None}, '""'),  # a null deletes nothing: without the check, a 200 that did nothing
    ({"priorty": None}, "priorty"),
    ({"priorty": "high"}, "priorty"),
    ({"shell": {"argvv": None}}, "shell.argvv"),
    ({"retry": {"tries": None}}, "retry.tries"),
])
async def test_patch_naming_an_unknown_member_is_a_422(api: ApiClient, patch: dict[str, Any],
                                                      field: str) -> None:
    created = await api.create(GOOD)
    status, problem, content_type = await api.request(
        "PATCH", f"/api/v1/jobs/{created['id']}", json=patch,
        headers={"Content-Type": "application/merge-patch+json"})
    assert status == 422, problem
    assert content_type == "application/problem+json"
    assert {e["field"]: e["reason"] for e in problem["errors"]} == {field: "unknown field"}
    status, job, _ = await api.request("GET", f"/api/v1/jobs/{created['id']}")
    assert status == 200 and job["updated_at"] == created["updated_at"]


async def test_patch_deleting_a_user_named_member_is_no_unknown_field(api: ApiClient) -> None:
    """Members of maps (env, labels) are the user's: a null for one that is not there
    deletes nothing and is no error, unlike a null for a field the job does not have."""
    created = await api.create(with_(shell={"argv": ["/bin/true"], "env": {"KEEP": "1"}},
                                     labels={"team": "a"}))
    status, job, _ = await api.request(
        "PATCH", f"/api/v1/jobs/{created['id']}",
        json={"shell": {"env": {"GONE": None}}, "labels": {"absent": None}},
        headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200, job
    assert job["shell"]["env"] == {"KEEP": "1"} and job["labels"] == {"team": "a"}, job
