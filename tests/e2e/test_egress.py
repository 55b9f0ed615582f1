"""Egress rules for http jobs, through the real binary: the attacks of issue 13 (the api's
own /metrics on loopback, cloud metadata at 169.254.169.254) are refused at creation when
the URL names the address, and at run time when a name resolves to it; no cookie of one
run reaches another. No request is ever sent to 169.254.169.254: it is refused before."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = pytest.mark.timeout(90)

NEVER = "0 0 1 1 *"


def _cluster(tmp: Any, zookeeper: str, template_db: str, **env: str) -> LocalCluster:
    cluster = _new_cluster(tmp, zookeeper, template_db)
    cluster.start("scheduler", **env)
    cluster.start("worker", **env)
    cluster.start("api", **env)
    return cluster


@pytest.fixture(scope="module")
def default_policy(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                   template_db: str) -> Iterator[LocalCluster]:
    """As shipped: no JOBSCHED_HTTP_ALLOW_CIDRS, so no loopback, no link-local."""
    cluster = _cluster(tmp_path_factory.mktemp("egress"), zookeeper, template_db)
    yield cluster
    _teardown(cluster)


@pytest.fixture(scope="module")
def loopback_allowed(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                     template_db: str) -> Iterator[LocalCluster]:
    cluster = _cluster(tmp_path_factory.mktemp("egress-lo"), zookeeper, template_db,
                       JOBSCHED_HTTP_ALLOW_CIDRS="127.0.0.0/8")
    yield cluster
    _teardown(cluster)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def http_job(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "egress", "schedule": "immediate", "kind": "http",
            "http": {"url": url, **extra}}


@pytest.mark.parametrize(("url", "rule"), [
    ("http://127.0.0.1:{port}/metrics", "loopback"),
    ("http://[::1]:{port}/metrics", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/metrics", "loopback"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata"),
    ("http://[fd00:ec2::254]/latest/api/token", "cloud metadata"),
    ("http://0.0.0.0:{port}/", "unspecified"),
])
async def test_a_literal_refused_address_is_422_at_creation_and_patch(
        default_policy: LocalCluster, session: aiohttp.ClientSession, url: str,
        rule: str) -> None:
    api = ApiClient(session, default_policy.api, token=default_policy.token)
    target = url.format(port=default_policy.api_port)
    status, problem, content_type = await api.request(
        "POST", "/api/v1/jobs", json=http_job(target, method="PUT"))
    assert status == 422 and content_type == "application/problem+json", problem
    [error] = problem["errors"]
    assert error["field"] == "http.url" and rule in error["reason"], problem
    assert "JOBSCHED_HTTP_ALLOW_CIDRS" in error["reason"]
    job = await api.create({**http_job("https://example.com/hook"), "schedule": NEVER})
    status, problem, _ = await api.request("PATCH", f"/api/v1/jobs/{job['id']}",
                                           json={"http": {"url": target}})
    assert status == 422 and problem["errors"][0]["field"] == "http.url", problem
    status, fetched, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}")
    assert fetched["http"]["url"] == "https://example.com/hook"  # unchanged


async def test_a_name_that_resolves_to_loopback_is_refused_at_run_time(
        default_policy: LocalCluster, session: aiohttp.ClientSession) -> None:
    """The api's own /metrics through "localhost": accepted at creation (a name), refused
    by the worker on the address it resolves to; nothing of /metrics is recorded."""
    api = ApiClient(session, default_policy.api, token=default_policy.token)
    job = await api.create(http_job(f"http://localhost:{default_policy.api_port}/metrics"))
    run = await api.wait_terminal(job["id"], timeout=30)
    assert run["state"] == "dead", run
    assert run["error"].startswith("egress refused: localhost: "), run
    assert "loopback address (127.0.0.0/8), refused by default" in run["error"]
    assert run["output"] is None


async def test_an_allowed_range_is_reached(loopback_allowed: LocalCluster,
                                           session: aiohttp.ClientSession) -> None:
    api = ApiClient(session, loopback_allowed.api, token=loopback_allowed.token)
    job = await api.create(http_job(f"http://localhost:{loopback_allowed.api_port}/healthz"))
    run = await api.wait_terminal(job["id"], timeout=30)
    assert run["state"] == "succeeded" and '"ok"' in run["output"], run


@pytest.fixture
async def cookie_server() -> AsyncIterator[tuple[str, list[str | None]]]:
    """/set answers with a session cookie; /echo records the Cookie header it got."""
    got: list[str | None] = []

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("session", secrets.token_hex(8), path="/")
        return response

    async def echo(request: web.Request) -> web.Response:
        got.append(request.headers.get("Cookie"))
        return web.Response(text=f"cookie={request.headers.get('Cookie')}")

    app = web.Application()
    app.router.add_get("/set", set_cookie)
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://localhost:{port}", got  # a name: cookie jars keep cookies of names
    await runner.cleanup()


async def test_no_cookie_of_one_run_reaches_another(
        loopback_allowed: LocalCluster, session: aiohttp.ClientSession,
        cookie_server: tuple[str, list[str | None]]) -> None:
    base, got = cookie_server
    a = ApiClient(session, loopback_allowed.api, token=loopback_allowed.token)
    b = a.with_token(loopback_allowed.create_token(namespace="b", name="b-admin"))
    setter = await a.create(http_job(f"{base}/set"))
    assert (await a.wait_terminal(setter["id"], timeout=30))["state"] == "succeeded"
    for api in (b, a):  # another namespace's run, and the same namespace's next one
        job = await api.create(http_job(f"{base}/echo"))
        run = await api.wait_terminal(job["id"], timeout=30)
        assert run["state"] == "succeeded" and run["output"] == "cookie=None", run
    assert got == [None, None]
