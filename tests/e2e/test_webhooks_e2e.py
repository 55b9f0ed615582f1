"""Webhooks end to end: the binary's api, scheduler and worker as processes, endpoints made
over HTTP (and with `jobsched webhooks`), jobs that really run, and real local receivers
that verify every signature with the standardwebhooks library."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from jobsched.crypto import new_key
from jobsched_dev.api_client import ApiClient as Api
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.e2e.tokens import admin_token
from tests.helpers import ROOT
from tests.receiver import Receiver

pytestmark = pytest.mark.timeout(90)

WEBHOOK_ENV = {"JOBSCHED_HTTP_ALLOW_CIDRS": "127.0.0.0/8", "JOBSCHED_WEBHOOK_POLL_S": "0.2"}


@pytest.fixture(scope="module")
def webhook_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                    template_db: str) -> Iterator[LocalCluster]:
    """api, scheduler and worker with a secrets key and loopback allowed for receivers."""
    cluster = _new_cluster(tmp_path_factory.mktemp("webhooks"), zookeeper, template_db)
    env = {**WEBHOOK_ENV, "JOBSCHED_SECRETS_KEY": new_key()}
    cluster.start("scheduler", **env)
    cluster.start("worker", extra=("--import", "sample_tasks"), **env)
    cluster.start("api", **env)
    yield cluster
    _teardown(cluster)


@pytest.fixture
async def api(webhook_cluster: LocalCluster) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, webhook_cluster.api, token=webhook_cluster.token)


def _run_label() -> dict[str, str]:
    """A label of this test's own: endpoints filter on it, so tests sharing the cluster
    never receive each other's events."""
    return {"run": uuid.uuid4().hex[:12]}


async def _endpoint(api: Api, url: str, events: list[str],
                    labels: dict[str, str]) -> dict[str, Any]:
    status, body, _ = await api.request("POST", "/api/v1/webhooks", json={
        "url": url, "events": events, "labels": labels})
    assert status == 201, body
    return body


async def _job(api: Api, labels: dict[str, str], function: str = "sample_tasks:noop",
               **extra: Any) -> dict[str, Any]:
    return await api.create({"name": "hooked", "schedule": "immediate", "kind": "python",
                             "python": {"function": function}, "labels": labels, **extra})


async def _deliveries(api: Api, endpoint_id: str, **params: str) -> list[dict[str, Any]]:
    status, body, _ = await api.request("GET", f"/api/v1/webhooks/{endpoint_id}/deliveries",
                                        params=params)
    assert status == 200, body
    return body["items"]


async def _until(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_an_ending_execution_is_delivered_signed(api: Api) -> None:
    labels = _run_label()
    async with Receiver() as receiver:
        endpoint = await _endpoint(api, receiver.url(), ["execution.succeeded",
                                                         "job.completed"], labels)
        secret = endpoint["secret"]
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]{44}", secret)
        receiver.secrets.append(secret)
        status, shown, _ = await api.request("GET", f"/api/v1/webhooks/{endpoint['id']}")
        assert status == 200 and "secret" not in shown and shown["events"] == endpoint["events"]
        job = await _job(api, {**labels, "team": "billing"})
        got = await receiver.wait_for(2)
    by_type = {r.json["type"]: r for r in got}
    assert set(by_type) == {"execution.succeeded", "job.completed"}
    assert all(r.verified_with == [secret] for r in got)
    data = by_type["execution.succeeded"].json["data"]
    assert data["job_id"] == job["id"] and data["job_name"] == "hooked"
    assert data["namespace"] == "default" and data["state"] == "succeeded"
    assert data["labels"] == {**labels, "team": "billing"} and data["attempt"] == 1
    assert by_type["job.completed"].json["data"]["job_id"] == job["id"]
    items = await _until(lambda: _deliveries(api, endpoint["id"], state="succeeded"))
    assert {d["event_id"] for d in items} <= {r.event_id for r in got}
    assert all(d["attempts"] == 1 and d["last_status"] == 200 for d in items)


async def test_event_and_label_filters(api: Api) -> None:
    labels = _run_label()
    async with Receiver() as receiver:
        dead_only = await _endpoint(api, receiver.url("/dead"), ["execution.dead"], labels)
        billing = await _endpoint(api, receiver.url("/billing"), ["execution.succeeded"],
                                  {**labels, "team": "billing"})
        await _job(api, labels)  # succeeds: dead_only does not want it, billing's label misses
        failing = await _job(api, {**labels, "team": "billing"}, "sample_tasks:always_fails")
        billed = await _job(api, {**labels, "team": "billing", "env": "prod"})
        await receiver.wait_for(2)
        await asyncio.sleep(1.5)  # room for anything that should not come
    got = sorted((r.path, r.json["type"], r.json["data"]["job_id"]) for r in receiver.received)
    assert got == sorted([("/dead", "execution.dead", failing["id"]),
                          ("/billing", "execution.succeeded", billed["id"])])
    assert all(len(r.verified_with) == 0 for r in receiver.received)  # no secret given
    assert dead_only["id"] != billing["id"]


async def test_a_500_is_retried_5_seconds_later_and_then_delivered(api: Api) -> None:
    labels = _run_label()
    async with Receiver(answers=[500]) as receiver:
        endpoint = await _endpoint(api, receiver.url(), ["execution.succeeded"], labels)
        receiver.secrets.append(endpoint["secret"])
        await _job(api, labels)
        [first] = await receiver.wait_for(1)
        failed = await _until(lambda: _deliveries(api, endpoint["id"], state="failed"))
        assert failed[0]["last_status"] == 500 and failed[0]["attempts"] == 1
        assert failed[0]["next_attempt_at"] is not None
        [_, second] = await receiver.wait_for(2, timeout=15)
    assert second.event_id == first.event_id and second.verified_with == [endpoint["secret"]]
    assert 4.0 <= second.at - first.at <= 7.5
    done = await _until(lambda: _deliveries(api, endpoint["id"], state="succeeded"))
    assert done[0]["attempts"] == 2 and done[0]["last_status"] == 200


async def test_410_disables_the_endpoint_until_enabled_again(api: Api) -> None:
    labels = _run_label()
    async with Receiver(answers=[410]) as receiver:
        endpoint = await _endpoint(api, receiver.url(), ["execution.succeeded"], labels)
        path = f"/api/v1/webhooks/{endpoint['id']}"
        await _job(api, labels)
        await receiver.wait_for(1)

        async def disabled() -> Any:
            _, body, _ = await api.request("GET", path)
            return body if not body["enabled"] else None

        body = await _until(disabled)
        assert body and "410" in body["disabled_reason"]
        status, problem, _ = await api.request(
            "POST", f"{path}/deliveries/{receiver.received[0].event_id}/redeliver")
        assert status == 409 and "disabled" in problem["detail"]
        status, body, _ = await api.request("PATCH", path, json={"enabled": True})
        assert status == 200 and body["enabled"] and body["disabled_reason"] is None
        # what waited while it was disabled goes now
        [_, again] = await receiver.wait_for(2)
    assert again.event_id == receiver.received[0].event_id


async def test_redeliver_sends_it_again_with_the_same_webhook_id(api: Api) -> None:
    labels = _run_label()
    async with Receiver() as receiver:
        endpoint = await _endpoint(api, receiver.url(), ["execution.succeeded"], labels)
        await _job(api, labels)
        [first] = await receiver.wait_for(1)
        await _until(lambda: _deliveries(api, endpoint["id"], state="succeeded"))
        status, body, _ = await api.request(
            "POST", f"/api/v1/webhooks/{endpoint['id']}/deliveries/{first.event_id}/redeliver")
        assert status == 200 and body["state"] == "pending" and body["attempts"] == 0
        [_, second] = await receiver.wait_for(2)
    assert second.event_id == first.event_id and second.body == first.body


async def test_a_rotated_secret_and_the_old_one_both_sign_for_a_day(api: Api) -> None:
    labels = _run_label()
    async with Receiver() as receiver:
        endpoint = await _endpoint(api, receiver.url(), ["execution.succeeded"], labels)
        old = endpoint["secret"]
        status, rotated, _ = await api.request(
            "POST", f"/api/v1/webhooks/{endpoint['id']}/rotate-secret")
        assert status == 200 and rotated["secret"] != old
        assert rotated["previous_secret_until"] is not None
        receiver.secrets += [rotated["secret"], old]
        await _job(api, labels)
        [got] = await receiver.wait_for(1)
    assert got.verified_with == [rotated["secret"], old]
    assert len(got.headers["webhook-signature"].split(" ")) == 2


async def test_a_namespace_never_sees_another_namespaces_webhooks(
        api: Api, webhook_cluster: LocalCluster) -> None:
    labels = _run_label()
    other = api.with_token(admin_token(webhook_cluster, namespace="other"))
    async with Receiver() as mine, Receiver() as theirs:
        endpoint = await _endpoint(api, mine.url(), ["execution.succeeded"], labels)
        path = f"/api/v1/webhooks/{endpoint['id']}"
        for method, suffix, body in [
                ("GET", "", None), ("PATCH", "", {"enabled": False}), ("DELETE", "", None),
                ("POST", "/rotate-secret", None), ("GET", "/deliveries", None),
                ("POST", f"/deliveries/{uuid.uuid4()}/redeliver", None)]:
            status, answer, _ = await other.request(method, path + suffix, json=body)
            assert status == 404, (method, suffix, answer)
        status, listed, _ = await other.request("GET", "/api/v1/webhooks")
        assert status == 200 and endpoint["id"] not in {e["id"] for e in listed["items"]}
        # the other namespace's job with the same labels reaches only its own endpoint
        their_endpoint = await _endpoint(other, theirs.url(), ["execution.succeeded"], labels)
        await _job(other, labels)
        [got] = await theirs.wait_for(1)
        await asyncio.sleep(1)
    assert got.json["data"]["namespace"] == "other" and mine.received == []
    status, still, _ = await api.request("GET", path)
    assert status == 200 and still["enabled"] and their_endpoint["namespace"] == "other"


async def test_bad_input_is_a_clear_4xx(api: Api, webhook_cluster: LocalCluster) -> None:
    cases = [
        ({"url": "http://169.254.169.254/latest", "events": ["execution.dead"]}, "url",
         "link-local"),
        ({"url": "ftp://example.com/x", "events": ["execution.dead"]}, "url", "pattern"),
        ({"url": "https://example.com/x", "events": ["execution.exploded"]}, "events[0]", ""),
        ({"url": "https://example.com/x", "events": []}, "events", ""),
        ({"url": "https://example.com/x", "events": ["job.completed", "job.completed"]},
         "events", "twice"),
        ({"url": "https://example.com/x", "events": ["job.completed"], "secret": "x"},
         "secret", "unknown field"),
    ]
    for body, field, reason in cases:
        status, problem, content_type = await api.request("POST", "/api/v1/webhooks", json=body)
        assert status == 422, (body, problem)
        assert content_type.startswith("application/problem+json")
        fields = {e["field"]: e["reason"] for e in problem["errors"]}
        assert field in fields and reason in fields[field], (body, problem)
    created = await _endpoint(api, "https://example.com/hook", ["job.completed"], {})
    status, problem, _ = await api.request("PATCH", f"/api/v1/webhooks/{created['id']}",
                                           json={"url": "http://[::1]:8080/x"})
    assert status == 422 and problem["errors"][0]["field"] == "url"
    assert (await api.request("GET", "/api/v1/webhooks/not-a-uuid"))[0] == 404
    assert (await api.request("GET", f"/api/v1/webhooks/{uuid.uuid4()}"))[0] == 404
    viewer = webhook_cluster.create_token(role="viewer")
    as_viewer = api.with_token(viewer)
    status, problem, _ = await as_viewer.request("POST", "/api/v1/webhooks", json={
        "url": "https://example.com/x", "events": ["job.completed"]})
    assert status == 403
    assert (await as_viewer.request("GET", f"/api/v1/webhooks/{created['id']}"))[0] == 200
    status, _, _ = await api.request("DELETE", f"/api/v1/webhooks/{created['id']}")
    assert status == 204
    assert (await api.request("GET", f"/api/v1/webhooks/{created['id']}"))[0] == 404


def _cli(cluster: LocalCluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")}
    env.update(JOBSCHED_URL=cluster.api, JOBSCHED_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "jobsched", "webhooks", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


async def test_the_cli_manages_endpoints_and_shows_deliveries(
        api: Api, webhook_cluster: LocalCluster) -> None:
    labels = _run_label()
    token = admin_token(webhook_cluster)
    label = f"run={labels['run']}"
    async with Receiver() as receiver:
        done = await asyncio.to_thread(_cli, webhook_cluster, token, "create", receiver.url(),
                                       "--event", "execution.succeeded", "--label", label)
        assert done.returncode == 0, done.stderr
        endpoint_id = re.search(r"created webhook (\S+)", done.stdout).group(1)  # type: ignore[union-attr]
        secret = re.search(r"secret:\s+(whsec_\S+)", done.stdout).group(1)  # type: ignore[union-attr]
        receiver.secrets.append(secret)
        await _job(api, labels)
        [got] = await receiver.wait_for(1)
        assert got.verified_with == [secret]
        await _until(lambda: _deliveries(api, endpoint_id, state="succeeded"))
        listed = await asyncio.to_thread(_cli, webhook_cluster, token, "deliveries", endpoint_id)
        assert listed.returncode == 0 and got.event_id in listed.stdout
        assert "succeeded" in listed.stdout
        again = await asyncio.to_thread(_cli, webhook_cluster, token, "redeliver", endpoint_id,
                                        got.event_id)
        assert again.returncode == 0, again.stderr
        await receiver.wait_for(2)
    shown = await asyncio.to_thread(_cli, webhook_cluster, token, "get", endpoint_id,
                                    "-o", "json")
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["id"] == endpoint_id
    off = await asyncio.to_thread(_cli, webhook_cluster, token, "update", endpoint_id,
                                  "--disable")
    assert off.returncode == 0 and "disabled" in off.stdout
    rotated = await asyncio.to_thread(_cli, webhook_cluster, token, "rotate-secret",
                                      endpoint_id)
    assert rotated.returncode == 0 and "whsec_" in rotated.stdout and secret not in rotated.stdout
    gone = await asyncio.to_thread(_cli, webhook_cluster, token, "delete", endpoint_id)
    assert gone.returncode == 0
    missing = await asyncio.to_thread(_cli, webhook_cluster, token, "get", endpoint_id)
    assert missing.returncode == 3 and "not found" in missing.stderr


def _docs_receiver() -> str:
    text = (ROOT / "docs/webhooks.md").read_text()
    marker = text.index("<!-- receiver example:")
    match = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert match is not None
    return match.group(1)


async def test_the_receiver_in_the_docs_verifies_a_real_delivery(
        api: Api, tmp_path: Any) -> None:
    labels = _run_label()
    port = free_port()
    endpoint = await _endpoint(api, f"http://127.0.0.1:{port}/", ["execution.succeeded"],
                               labels)
    script = tmp_path / "receiver.py"
    script.write_text(_docs_receiver())
    env = {**os.environ, "WEBHOOK_SECRET": endpoint["secret"], "PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(50):  # until it listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        job = await _job(api, labels)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        delivered = await _until(lambda: _deliveries(api, endpoint["id"], state="succeeded"))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 5)
    assert line.split()[:2] == ["verified", "execution.succeeded"], line
    execution_id = line.split()[2]
    status, execution, _ = await api.request("GET", f"/api/v1/executions/{execution_id}")
    assert status == 200 and execution["job_id"] == job["id"]
    assert delivered[0]["last_status"] == 204


async def test_without_a_secrets_key_endpoints_cannot_be_created(
        local_cluster: LocalCluster) -> None:
    local_cluster.start("api")
    async with aiohttp.ClientSession() as session:
        api = Api(session, local_cluster.api, token=local_cluster.token)
        status, problem, _ = await api.request("POST", "/api/v1/webhooks", json={
            "url": "https://example.com/x", "events": ["job.completed"]})
    assert status == 403, problem
    assert problem["title"] == "Webhooks not configured"
    assert "JOBSCHED_SECRETS_KEY" in problem["detail"]
