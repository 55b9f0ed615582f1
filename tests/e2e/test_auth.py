"""Authentication, namespaces and roles through a real api process: every documented
route is checked, so a route added later is covered without editing this file."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = pytest.mark.timeout(90)

PYTHON_JOB: dict[str, Any] = {"name": "py", "schedule": "0 0 1 1 *", "kind": "python",
                              "python": {"function": "sample_tasks:noop"}}
SHELL_JOB: dict[str, Any] = {"name": "sh", "schedule": "0 0 1 1 *", "kind": "shell",
                             "shell": {"argv": ["/bin/true"]}}
ZERO = "00000000-0000-0000-0000-000000000000"


class Tokens:
    def __init__(self, cluster: LocalCluster) -> None:
        self.admin = cluster.token
        self.editor = cluster.create_token(role="editor", name="editor")
        self.viewer = cluster.create_token(role="viewer", name="viewer")
        self.other_admin = cluster.create_token(namespace="other", role="admin")


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                 template_db: str) -> Iterator[LocalCluster]:
    """An api alone (nothing runs), with a short token cache so revocation shows fast,
    and no limit on failed authentications (this module sends many on purpose; the limit
    has its own test in test_abuse_bounds.py)."""
    cluster = _new_cluster(tmp_path_factory.mktemp("auth"), zookeeper, template_db)
    cluster.start("api", JOBSCHED_TOKEN_CACHE_S="1", JOBSCHED_AUTH_FAILURES_PER_S="0")
    yield cluster
    _teardown(cluster)


@pytest.fixture(scope="module")
def tokens(auth_cluster: LocalCluster) -> Tokens:
    return Tokens(auth_cluster)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def as_(session: aiohttp.ClientSession, cluster: LocalCluster, token: str | None) -> ApiClient:
    return ApiClient(session, cluster.api, token=token)


async def operations(api: ApiClient) -> list[tuple[str, str, str]]:
    """(method, path template, x-access) of every operation the served document lists."""
    status, document, _ = await api.request("GET", "/api/v1/openapi.json")
    assert status == 200, document
    return [(method.upper(), path, entry["x-access"])
            for path, methods in document["paths"].items()
            for method, entry in methods.items()]


def fill(path: str, job_id: str) -> str:
    """The route with ``{id}`` as the job's id and any other parameter (``{event_id}``) as
    an id of nothing: the route matches, the resource does not exist."""
    return re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), path.replace("{id}", job_id))


async def test_every_api_route_needs_a_token(
    auth_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    ops = await operations(as_(session, auth_cluster, auth_cluster.token))
    assert len(ops) >= 13
    anonymous = as_(session, auth_cluster, None)
    protected = [op for op in ops if op[1].startswith("/api/")]
    assert all(access != "open" for _, _, access in protected)
    for method, path, _ in protected:
        for header in (None, "Bearer", "Bearer jsk_" + "x" * 43, "Basic dXNlcjpwYXNz",
                       f"Token {auth_cluster.token}"):
            headers = {"Authorization": header} if header else {}
            status, problem, content_type = await anonymous.request(
                method, fill(path, ZERO), headers=headers, json={})
            assert status == 401, (method, path, header, problem)
            assert content_type == "application/problem+json"
            assert problem["status"] == 401 and problem["title"] == "Unauthorized"
    # open routes stay open
    for method, path, access in ops:
        if access == "open":
            status, _, _ = await anonymous.request(method, path)
            assert status in (200, 503), (method, path)


async def test_401_carries_the_bearer_challenge(auth_cluster: LocalCluster) -> None:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{auth_cluster.api}/api/v1/jobs") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_namespace_sees_nothing(
    auth_cluster: LocalCluster, tokens: Tokens, session: aiohttp.ClientSession
) -> None:
    admin = as_(session, auth_cluster, tokens.admin)
    stranger = as_(session, auth_cluster, tokens.other_admin)
    job = await admin.create(PYTHON_JOB)
    assert job["namespace"] == "default"
    status, execution, _ = await admin.request("POST", f"/api/v1/jobs/{job['id']}/trigger")
    assert status == 201, execution
    for method, path, _ in await operations(admin):
        if "{id}" not in path:
            continue
        target = execution["id"] if path.startswith("/api/v1/executions") else job["id"]
        body = {"labels": {"x": "y"}} if method == "PATCH" else None
        status, problem, content_type = await stranger.request(
            method, fill(path, target), json=body)
        assert status == 404, (method, path, problem)
        assert content_type == "application/problem+json"
    status, page, _ = await stranger.request("GET", "/api/v1/jobs?name=py")
    assert status == 200 and page["items"] == []
    # and the job is untouched by all of that
    status, fetched, _ = await admin.request("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and fetched["state"] == "active" and fetched["labels"] == {}
    # the stranger's own jobs live in its namespace
    own = await stranger.create(PYTHON_JOB)
    assert own["namespace"] == "other"
    status, _, _ = await admin.request("GET", f"/api/v1/jobs/{own['id']}")
    assert status == 404


async def test_viewers_read_but_never_write(
    auth_cluster: LocalCluster, tokens: Tokens, session: aiohttp.ClientSession
) -> None:
    admin = as_(session, auth_cluster, tokens.admin)
    viewer = as_(session, auth_cluster, tokens.viewer)
    job = await admin.create(PYTHON_JOB)
    writes = 0
    for method, path, access in await operations(admin):
        if access == "write":
            writes += 1
            status, problem, content_type = await viewer.request(
                method, fill(path, job["id"]), json=PYTHON_JOB)
            assert status == 403, (method, path, problem)
            assert content_type == "application/problem+json"
            assert "read-only" in problem["detail"]
        elif access == "read" and method == "GET":
            status, _, _ = await viewer.request(method, fill(path, job["id"]))
            assert status in (200, 404), (method, path)  # 404: the execution id is a job's
    assert writes >= 6
    status, fetched, _ = await viewer.request("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and fetched["state"] == "active"
    status, _, _ = await viewer.request("GET", "/api/v1/cluster")
    assert status == 200
    status, preview, _ = await viewer.request("POST", "/api/v1/schedules/preview",
                                              json={"schedule": "0 9 * * *", "count": 2})
    assert status == 200 and len(preview["items"]) == 2


async def test_only_admins_create_or_change_shell_jobs(
    auth_cluster: LocalCluster, tokens: Tokens, session: aiohttp.ClientSession
) -> None:
    admin = as_(session, auth_cluster, tokens.admin)
    editor = as_(session, auth_cluster, tokens.editor)
    status, problem, _ = await editor.request("POST", "/api/v1/jobs", json=SHELL_JOB)
    assert status == 403, problem
    assert problem["errors"] == [{"field": "kind", "reason": problem["detail"]}]
    assert "admin" in problem["detail"]
    python_job = await editor.create(PYTHON_JOB)  # other kinds are the editor's to make
    status, problem, _ = await editor.request(
        "PATCH", f"/api/v1/jobs/{python_job['id']}",
        json={"kind": "shell", "shell": {"argv": ["/bin/true"]}})
    assert status == 403, problem
    shell_job = await admin.create(SHELL_JOB)
    status, problem, _ = await editor.request("PATCH", f"/api/v1/jobs/{shell_job['id']}",
                                              json={"shell": {"argv": ["/bin/false"]}})
    assert status == 403, problem
    # ...but an editor may pause, resume or cancel the shell job an admin made
    for action in ("pause", "resume"):
        status, body, _ = await editor.request("POST",
                                               f"/api/v1/jobs/{shell_job['id']}/{action}")
        assert status == 200, body
    status, fetched, _ = await admin.request("GET", f"/api/v1/jobs/{shell_job['id']}")
    assert fetched["shell"]["argv"] == ["/bin/true"]
    status, patched, _ = await admin.request("PATCH", f"/api/v1/jobs/{shell_job['id']}",
                                             json={"shell": {"argv": ["/bin/false"]}})
    assert status == 200 and patched["shell"]["argv"] == ["/bin/false"]


async def test_a_revoked_token_is_refused(
    auth_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    token = auth_cluster.create_token(role="viewer", name="to-revoke")
    api = as_(session, auth_cluster, token)
    status, _, _ = await api.request("GET", "/api/v1/jobs")
    assert status == 200
    listed = auth_cluster.jobsched("token", "list", "--output", "json").stdout
    token_id = next(t["id"] for t in json.loads(listed)
                    if t["name"] == "to-revoke")
    assert token not in listed  # listing never shows a token
    done = auth_cluster.jobsched("token", "revoke", token_id)
    assert "revoked" in done.stdout
    deadline = time.monotonic() + 5  # the api trusts a looked-up token token_cache_s = 1
    while time.monotonic() < deadline:
        status, problem, _ = await api.request("GET", "/api/v1/jobs")
        if status == 401:
            break
        await asyncio.sleep(0.2)
    assert status == 401 and "revoked" in problem["detail"]
    table = auth_cluster.jobsched("token", "list").stdout
    assert any(token_id in line and "revoked" in line for line in table.splitlines())


def test_token_commands_refuse_bad_input(auth_cluster: LocalCluster) -> None:
    bad_namespace = auth_cluster.jobsched("token", "create", "--namespace", "Bad NS",
                                          "--role", "admin", check=False)
    assert bad_namespace.returncode == 2 and "namespace" in bad_namespace.stderr
    bad_role = auth_cluster.jobsched("token", "create", "--namespace", "x", "--role", "root",
                                     check=False)
    assert bad_role.returncode == 2
    missing = auth_cluster.jobsched("token", "revoke", str(uuid.uuid4()), check=False)
    assert missing.returncode == 2 and "no token" in missing.stderr
    expiring = auth_cluster.jobsched("token", "create", "--namespace", "x", "--role",
                                     "viewer", "--expires-in", "1h")
    assert expiring.stdout.startswith("jsk_") and "expires" in expiring.stderr


async def test_an_expired_token_is_refused(
    auth_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    done = auth_cluster.jobsched("token", "create", "--namespace", "default", "--role",
                                 "viewer", "--expires-in", "2s")
    api = as_(session, auth_cluster, done.stdout.strip())
    status, _, _ = await api.request("GET", "/api/v1/jobs")
    assert status == 200
    await asyncio.sleep(3.2)  # past expiry and the 1 s cache
    status, problem, _ = await api.request("GET", "/api/v1/jobs")
    assert status == 401, problem


async def test_too_many_headers_is_431(
    auth_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    api = as_(session, auth_cluster, auth_cluster.token)
    headers = {f"X-Filler-{i}": "x" for i in range(70)}
    status, problem, content_type = await api.request("GET", "/api/v1/jobs", headers=headers)
    assert status == 431 and content_type == "application/problem+json", problem
    assert "64" in problem["detail"]


def _second_api(cluster: LocalCluster, **env: str) -> str:
    proc = cluster.start("api", **env)
    url = proc.url
    cluster.api_port = cluster.processes[0].port  # the module's api stays the default
    return url


async def test_disabled_kinds_are_refused_with_the_reason(
    auth_cluster: LocalCluster, tokens: Tokens, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    admin_default = as_(session, auth_cluster, tokens.admin)
    http_job = await admin_default.create({
        "name": "h", "schedule": "0 0 1 1 *", "kind": "http",
        "http": {"url": "https://example.com/"}})
    url = _second_api(auth_cluster, JOBSCHED_DISABLED_KINDS="shell,http")
    admin = ApiClient(session, url, token=tokens.admin)
    for job in (SHELL_JOB, {**PYTHON_JOB, "kind": "http", "python": None,
                            "http": {"url": "https://example.com/"}}):
        status, problem, _ = await admin.request("POST", "/api/v1/jobs", json=job)
        assert status == 403, problem
        assert f"job kind '{job['kind']}' is disabled" in problem["detail"]
    status, problem, _ = await admin.request("POST", f"/api/v1/jobs/{http_job['id']}/trigger")
    assert status == 403 and "disabled" in problem["detail"]
    status, _, _ = await admin.request("POST", f"/api/v1/jobs/{http_job['id']}/pause")
    assert status == 200  # making a job do less is always allowed
    status, problem, _ = await admin.request("POST", f"/api/v1/jobs/{http_job['id']}/resume")
    assert status == 403 and "disabled" in problem["detail"]
    created = await admin.create(PYTHON_JOB)
    assert created["kind"] == "python"
