"""Secret references: resolved on the worker (environment and a secrets directory), used
by shell and http jobs, and never seen in API responses, stored rows or process logs."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = pytest.mark.timeout(90)

ENV_SECRET = "env-" + secrets.token_urlsafe(24)
FILE_SECRET = "file-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def secret_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                   template_db: str) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("secrets")
    secrets_dir = tmp / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "FILE_ONE").write_text(FILE_SECRET + "\n")
    cluster = _new_cluster(tmp, zookeeper, template_db)
    debug = {"JOBSCHED_LOG_LEVEL": "DEBUG"}  # the most a log could ever say
    cluster.start("scheduler", **debug)
    cluster.start("worker", JOBSCHED_SECRET_ENV_ONE=ENV_SECRET,
                  JOBSCHED_SECRETS_DIR=str(secrets_dir), **debug)
    cluster.start("api", **debug)
    yield cluster
    _teardown(cluster)


@pytest.fixture
async def api(secret_cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, secret_cluster.api, token=secret_cluster.token)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP endpoint that records the headers it gets and echoes one back."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=f"got key {request.headers.get('X-Api-Key')}")

    app = web.Application()
    app.router.add_post("/hook", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", seen
    await runner.cleanup()


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def assert_no_secret(text: str, where: str) -> None:
    for value in (ENV_SECRET, FILE_SECRET):
        assert value not in text, f"a secret value is in {where}"


async def test_secrets_reach_the_job_and_nothing_else(
    api: ApiClient, secret_cluster: LocalCluster, receiver: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = receiver
    responses: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        status, body, _ = await api.request(method, path, **kwargs)
        responses.append(repr(body))
        assert status < 300, body
        return body

    shell = await call("POST", "/api/v1/jobs", json={
        "name": "uses-secrets", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", 'printf %s "$ONE" | sha256sum; '
                           'printf %s "$TWO" | sha256sum; echo "leak: $ONE $TWO"'],
                  "env": {"ONE": {"secret": "ENV_ONE"}, "TWO": {"secret": "FILE_ONE"},
                          "PLAIN": "visible"}}})
    assert shell["shell"]["env"]["ONE"] == {"secret": "ENV_ONE"}  # the reference, only
    http = await call("POST", "/api/v1/jobs", json={
        "name": "sends-secrets", "schedule": "immediate", "kind": "http",
        "http": {"method": "POST", "url": url,
                 "headers": {"X-Api-Key": {"secret": "ENV_ONE"},
                             "Authorization": {"secret": "FILE_ONE"}, "X-Plain": "p"}}})
    shell_run, http_run = await asyncio.gather(api.wait_terminal(shell["id"]),
                                               api.wait_terminal(http["id"]))
    responses += [repr(shell_run), repr(http_run)]

    assert shell_run["state"] == "succeeded", shell_run
    lines = shell_run["output"].splitlines()
    assert lines[0].startswith(sha(ENV_SECRET)) and lines[1].startswith(sha(FILE_SECRET))
    assert lines[2] == "leak: *** ***"  # echoed values are masked in the recorded output

    assert http_run["state"] == "succeeded", http_run
    assert seen[-1]["X-Api-Key"] == ENV_SECRET and seen[-1]["Authorization"] == FILE_SECRET
    assert seen[-1]["X-Plain"] == "p"
    assert http_run["output"] == "got key ***"

    for job in (shell, http):
        await call("GET", f"/api/v1/jobs/{job['id']}")
        await call("GET", f"/api/v1/jobs/{job['id']}/executions")
    await call("GET", "/api/v1/jobs")
    assert_no_secret("\n".join(responses), "an API response")

    conn = await asyncpg.connect(secret_cluster.database_url)
    try:
        for table in ("jobs", "executions", "attempts", "api_tokens"):
            rows = await conn.fetch(f"SELECT row_to_json(t)::text AS r FROM {table} t")
            assert rows or table == "api_tokens"
            assert_no_secret("\n".join(r["r"] for r in rows), f"table {table}")
    finally:
        await conn.close()

    logs = list(secret_cluster.tmp.glob("*.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert "DEBUG" in text
        assert_no_secret(text, log.name)


async def test_a_missing_secret_fails_the_attempt_naming_it(api: ApiClient) -> None:
    job = await api.create({
        "name": "missing-secret", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/true"], "env": {"X": {"secret": "NOT_CONFIGURED"}}}})
    run = await api.wait_terminal(job["id"])
    assert run["state"] == "dead", run
    assert run["error"].startswith("secret 'NOT_CONFIGURED' is not configured on this "
                                   "worker: no file /")
    assert run["error"].endswith("/secrets/NOT_CONFIGURED and "
                                 "$JOBSCHED_SECRET_NOT_CONFIGURED is not set")
    job = await api.create({
        "name": "missing-header-secret", "schedule": "immediate", "kind": "http",
        "http": {"url": "http://127.0.0.1:9/", "headers": {"X": {"secret": "NOPE"}}}})
    run = await api.wait_terminal(job["id"])
    assert run["state"] == "dead" and "secret 'NOPE' is not configured" in run["error"]


@pytest.mark.parametrize(("ref", "field"), [
    ({"secret": "../etc/passwd"}, "shell.env.X.secret"),
    ({"secret": ""}, "shell.env.X.secret"),
    ({"secret": "A", "default": "x"}, "shell.env.X.default"),
    ({"name": "A"}, "shell.env.X.name"),
    (5, "shell.env.X"),
])
async def test_malformed_references_are_422(api: ApiClient, ref: Any, field: str) -> None:
    status, problem, _ = await api.request("POST", "/api/v1/jobs", json={
        "name": "bad-ref", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/true"], "env": {"X": ref}}})
    assert status == 422, problem
    assert field in [e["field"] for e in problem["errors"]], problem
