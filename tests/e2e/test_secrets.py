"""Secrets per namespace, through the real binary: the secrets API (admin writes, values
never returned), the three backends (the store, <secrets_dir>/<namespace>/NAME, AWS
Secrets Manager on a local moto server), resolution in the job's own namespace only, and
no value in any API response, stored row or process log."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import boto3
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from jobsched.crypto import SecretBox, SecretsKeyError, new_key
from jobsched.worker.secrets import MIN_MASKED_LENGTH
from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(90)

STORE_SECRET = "store-" + secrets.token_urlsafe(24)
FILE_SECRET = "file-" + secrets.token_urlsafe(24)
AWS_SECRET = "aws-" + secrets.token_urlsafe(24)
B_SECRET = "b-only-" + secrets.token_urlsafe(24)
B_FILE_SECRET = "b-file-" + secrets.token_urlsafe(24)
RETIRED_ENV_SECRET = "env-" + secrets.token_urlsafe(24)
ALL_VALUES = (STORE_SECRET, FILE_SECRET, AWS_SECRET, B_SECRET, B_FILE_SECRET,
              RETIRED_ENV_SECRET)
LOOPBACK = {"JOBSCHED_HTTP_ALLOW_CIDRS": "127.0.0.0/8"}  # the receiver below is local
STORE_KEY = new_key()


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_secret(Name="jobsched/default/AWS_ONE", SecretString=AWS_SECRET)
    yield url
    server.stop()


@pytest.fixture(scope="module")
def secret_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                   template_db: str, moto: str) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("secrets")
    secrets_dir = tmp / "secrets"
    (secrets_dir / "default").mkdir(parents=True)
    (secrets_dir / "default" / "FILE_ONE").write_text(FILE_SECRET + "\n")
    (secrets_dir / "b").mkdir()
    (secrets_dir / "b" / "B_FILE").write_text(B_FILE_SECRET + "\n")
    secrets_dir.chmod(0o700)  # root only: shell runs are another uid
    cluster = _new_cluster(tmp, zookeeper, template_db)
    debug = {"JOBSCHED_LOG_LEVEL": "DEBUG", "JOBSCHED_SECRETS_KEY": STORE_KEY,
             **LOOPBACK}  # the most a log could ever say
    cluster.start("scheduler", **debug)
    cluster.start("worker", JOBSCHED_SECRETS_DIR=str(secrets_dir),
                  JOBSCHED_SECRETS_AWS_REGION="us-east-1",
                  JOBSCHED_SECRETS_AWS_ENDPOINT_URL=moto, AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing",
                  JOBSCHED_SECRET_ENV_ONE=RETIRED_ENV_SECRET, **debug)
    cluster.start("api", **debug)
    yield cluster
    _teardown(cluster)


@pytest.fixture(scope="module")
def b_token(secret_cluster: LocalCluster) -> str:
    return secret_cluster.create_token(namespace="b", name="b-admin")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(secret_cluster: LocalCluster, session: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(session, secret_cluster.api, token=secret_cluster.token)


@pytest.fixture
async def b_api(secret_cluster: LocalCluster, session: aiohttp.ClientSession,
                b_token: str) -> ApiClient:
    b = ApiClient(session, secret_cluster.api, token=b_token)
    status, body, _ = await b.request("PUT", "/api/v1/secrets/B_ONLY",
                                      json={"value": B_SECRET})
    assert status in (200, 201), body
    return b


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP endpoint that records the headers it gets and echoes one back."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=f"got key {request.headers.get('X-ApiClient-Key')}")

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
    for value in ALL_VALUES:
        assert value not in text, f"a secret value is in {where}"


async def test_the_secrets_api_never_returns_a_value(api: ApiClient, session: aiohttp.ClientSession,
                                                     secret_cluster: LocalCluster) -> None:
    value = "api-" + secrets.token_urlsafe(16)
    status, created, _ = await api.request("PUT", "/api/v1/secrets/API_CHECK",
                                           json={"value": value})
    assert status == 201 and created["name"] == "API_CHECK", created
    status, replaced, _ = await api.request("PUT", "/api/v1/secrets/API_CHECK",
                                            json={"value": value + "2"})
    assert status == 200 and replaced["created_at"] == created["created_at"]
    status, listed, _ = await api.request("GET", "/api/v1/secrets")
    assert status == 200 and "API_CHECK" in [s["name"] for s in listed["items"]]
    assert set(listed["items"][0]) == {"name", "created_at", "updated_at"}
    assert value not in repr([created, replaced, listed])
    for role in ("editor", "viewer"):
        other = ApiClient(session, secret_cluster.api,
                          token=secret_cluster.create_token(role=role, name=role))
        status, problem, _ = await other.request("PUT", "/api/v1/secrets/API_CHECK",
                                                 json={"value": "x"})
        assert status == 403, problem
        status, problem, _ = await other.request("DELETE", "/api/v1/secrets/API_CHECK")
        assert status == 403, problem
        status, listed, _ = await other.request("GET", "/api/v1/secrets")
        assert status == 200 and "API_CHECK" in [s["name"] for s in listed["items"]]
    for name, body in (("9LIVES", {"value": "x"}), ("OK", {"value": ""}),
                       ("OK", {"value": "a\x00b"}), ("OK", {"value": 5}),
                       ("OK", {"value": "x", "extra": 1})):
        status, problem, _ = await api.request("PUT", f"/api/v1/secrets/{name}", json=body)
        assert status == 422, (name, body, problem)
    status, _, _ = await api.request("DELETE", "/api/v1/secrets/API_CHECK")
    assert status == 204
    status, problem, _ = await api.request("DELETE", "/api/v1/secrets/API_CHECK")
    assert status == 404, problem


async def test_secrets_of_every_backend_reach_the_job_and_nothing_else(
    api: ApiClient, secret_cluster: LocalCluster, receiver: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = receiver
    responses: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        status, body, _ = await api.request(method, path, **kwargs)
        responses.append(repr(body))
        assert status < 300, body
        return body

    await call("PUT", "/api/v1/secrets/STORE_ONE", json={"value": STORE_SECRET})
    shell = await call("POST", "/api/v1/jobs", json={
        "name": "uses-secrets", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", 'printf %s "$ONE" | sha256sum; '
                           'printf %s "$TWO" | sha256sum; printf %s "$THREE" | sha256sum; '
                           'echo "leak: $ONE $TWO $THREE"'],
                  "env": {"ONE": {"secret": "STORE_ONE"}, "TWO": {"secret": "FILE_ONE"},
                          "THREE": {"secret": "AWS_ONE"}, "PLAIN": "visible"}}})
    assert shell["shell"]["env"]["ONE"] == {"secret": "STORE_ONE"}  # the reference, only
    http = await call("POST", "/api/v1/jobs", json={
        "name": "sends-secrets", "schedule": "immediate", "kind": "http",
        "http": {"method": "POST", "url": url,
                 "headers": {"X-ApiClient-Key": {"secret": "STORE_ONE"},
                             "Authorization": {"secret": "FILE_ONE"},
                             "X-Aws": {"secret": "AWS_ONE"}, "X-Plain": "p"}}})
    shell_run, http_run = await asyncio.gather(api.wait_terminal(shell["id"], timeout=40),
                                               api.wait_terminal(http["id"], timeout=40))
    responses += [repr(shell_run), repr(http_run)]

    assert shell_run["state"] == "succeeded", shell_run
    lines = shell_run["output"].splitlines()
    assert [line.split()[0] for line in lines[:3]] == [
        sha(STORE_SECRET), sha(FILE_SECRET), sha(AWS_SECRET)]
    assert lines[3] == "leak: *** *** ***"  # echoed values are masked in the recorded output

    assert http_run["state"] == "succeeded", http_run
    assert (seen[-1]["X-ApiClient-Key"], seen[-1]["Authorization"], seen[-1]["X-Aws"]) == (
        STORE_SECRET, FILE_SECRET, AWS_SECRET)
    assert seen[-1]["X-Plain"] == "p"
    assert http_run["output"] == "got key ***"

    for job in (shell, http):
        await call("GET", f"/api/v1/jobs/{job['id']}")
        await call("GET", f"/api/v1/jobs/{job['id']}/executions")
    await call("GET", "/api/v1/jobs")
    await call("GET", "/api/v1/secrets")
    assert_no_secret("\n".join(responses), "an API response")

    conn = await asyncpg.connect(secret_cluster.database_url)
    try:
        for table in ("jobs", "executions", "attempts", "api_tokens", "secrets"):
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


async def _run(api: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    created = await api.create({"schedule": "immediate", **job})
    return await api.wait_terminal(created["id"], timeout=40)


async def test_a_namespace_cannot_read_another_namespaces_secret(
        api: ApiClient, b_api: ApiClient, receiver: tuple[str, list[dict[str, str]]]) -> None:
    """The attack of issue 13: a job of namespace default names b's secrets, reads them
    raw (od, so masking cannot hide them) or sends them to a server of its own."""
    url, seen = receiver
    dump = ["/bin/sh", "-c", 'printf %s "$X" | od -c']
    own = await _run(b_api, {"name": "b-reads-its-own", "kind": "shell",
                             "shell": {"argv": dump, "env": {"X": {"secret": "B_ONLY"}}}})
    assert own["state"] == "succeeded" and "b   -   o   n   l   y" in own["output"]  # control
    errors = {}
    for name in ("B_ONLY", "B_FILE", "NOBODY_HAS_THIS"):
        run = await _run(api, {"name": f"steal-{name}", "kind": "shell",
                               "shell": {"argv": dump, "env": {"X": {"secret": name}}}})
        assert run["state"] == "dead" and run["output"] is None, run
        errors[name] = run["error"].replace(name, "NAME")
        sent_before = len(seen)
        run = await _run(api, {"name": f"send-{name}", "kind": "http",
                               "http": {"method": "POST", "url": url,
                                        "headers": {"X-ApiClient-Key": {"secret": name}}}})
        assert run["state"] == "dead" and len(seen) == sent_before, run  # never sent
        assert run["error"].replace(name, "NAME") == errors[name]
    # A name b owns (in the store or as a file) fails exactly as one nobody has.
    assert errors["B_ONLY"] == errors["B_FILE"] == errors["NOBODY_HAS_THIS"]
    assert "is not defined in namespace 'default'" in errors["B_ONLY"]
    assert all(B_SECRET not in str(h) and B_FILE_SECRET not in str(h) for h in seen)


async def test_the_retired_environment_backend_is_not_read(api: ApiClient,
                                                           secret_cluster: LocalCluster) -> None:
    run = await _run(api, {"name": "env-secret", "kind": "shell",
                           "shell": {"argv": ["/bin/true"],
                                     "env": {"X": {"secret": "ENV_ONE"}}}})
    assert run["state"] == "dead" and "is not defined in namespace" in run["error"]
    worker_log = next(secret_cluster.tmp.glob("worker*.log")).read_text()
    assert "JOBSCHED_SECRET_* environment variable(s) are ignored" in worker_log


async def test_a_missing_secret_fails_the_attempt_naming_it(api: ApiClient) -> None:
    run = await _run(api, {"name": "missing-secret", "kind": "shell",
                           "shell": {"argv": ["/bin/true"],
                                     "env": {"X": {"secret": "NOT_CONFIGURED"}}}})
    assert run["state"] == "dead", run
    assert run["error"].startswith("secret 'NOT_CONFIGURED' is not defined in namespace "
                                   "'default' (looked in: the secrets store, /")
    assert run["error"].endswith("/secrets/default/NOT_CONFIGURED, AWS Secrets Manager "
                                 "('jobsched/default/NOT_CONFIGURED'))")


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


async def test_an_api_without_a_key_refuses_to_store_secrets(
        secret_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    module_api = secret_cluster.api_port
    proc = secret_cluster.start("api", JOBSCHED_SECRETS_KEY="")
    secret_cluster.api_port = module_api  # the module's api stays the default
    try:
        keyless = ApiClient(session, proc.url, token=secret_cluster.token)
        status, problem, _ = await keyless.request("PUT", "/api/v1/secrets/X",
                                                   json={"value": "v"})
        assert status == 403 and "JOBSCHED_SECRETS_KEY" in problem["detail"], problem
    finally:
        proc.terminate()


@pytest.mark.skipif(os.geteuid() != 0, reason="shell runs need a root worker")
async def test_a_shell_run_cannot_read_the_secrets_directory(
        api: ApiClient, secret_cluster: LocalCluster) -> None:
    folder = secret_cluster.tmp / "secrets"
    run = await _run(api, {"name": "read-dir", "kind": "shell", "shell": {
        "argv": ["/bin/sh", "-c", f"cat {folder}/default/FILE_ONE {folder}/b/B_FILE"]}})
    assert run["state"] == "dead" and "Permission denied" in run["output"], run
    assert FILE_SECRET not in run["output"] and B_FILE_SECRET not in run["output"]


def _jobsched(cluster: LocalCluster, *args: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobsched", *args],
                          env=cluster.env(JOBSCHED_SECRETS_KEY=key), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_rotate_key_reseals_the_store_under_the_new_key(
        api: ApiClient, secret_cluster: LocalCluster) -> None:
    made = _jobsched(secret_cluster, "secrets", "new-key", key="")
    assert made.returncode == 0, made.stderr
    new = made.stdout.strip()
    SecretBox([new])  # a usable key
    status, _, _ = await api.request("PUT", "/api/v1/secrets/ROTATED",
                                     json={"value": "rotate-me"})
    assert status in (200, 201)
    done = _jobsched(secret_cluster, "secrets", "rotate-key", key=f"{new},{STORE_KEY}")
    assert done.returncode == 0 and done.stdout.startswith("resealed "), done
    conn = await asyncpg.connect(secret_cluster.database_url)
    try:
        sealed = await conn.fetchval("SELECT sealed FROM secrets WHERE name = 'ROTATED'")
        assert SecretBox([new]).open(bytes(sealed)) == b"rotate-me"
        with pytest.raises(SecretsKeyError):
            SecretBox([STORE_KEY]).open(bytes(sealed))
        lost = _jobsched(secret_cluster, "secrets", "rotate-key", key=new_key())
        assert lost.returncode == 1 and "not in JOBSCHED_SECRETS_KEY" in lost.stderr, lost
        # Back under the module's key, for the worker (it has only that one).
        back = _jobsched(secret_cluster, "secrets", "rotate-key", key=f"{STORE_KEY},{new}")
        assert back.returncode == 0, back
        sealed = await conn.fetchval("SELECT sealed FROM secrets WHERE name = 'ROTATED'")
        assert SecretBox([STORE_KEY]).open(bytes(sealed)) == b"rotate-me"
    finally:
        await conn.close()


CUT_LIMIT = 64  # the worker's output_limit_bytes in the test below


@pytest.fixture
def small_output_cluster(tmp_path: Path, zookeeper: str,
                         template_db: str) -> Iterator[LocalCluster]:
    """A deployment whose only worker keeps CUT_LIMIT bytes of output."""
    cluster = _new_cluster(tmp_path, zookeeper, template_db)
    key = {"JOBSCHED_SECRETS_KEY": STORE_KEY}
    cluster.start("scheduler")
    cluster.start("worker", JOBSCHED_OUTPUT_LIMIT_BYTES=str(CUT_LIMIT), **key)
    cluster.start("api", **key)
    yield cluster
    _teardown(cluster)


async def test_a_secret_straddling_the_output_limit_leaves_no_prefix(
        small_output_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    """Issue 13's last finding against real processes: masking runs before truncation, so
    a value printed across the output limit leaves none of its first characters behind."""
    api = ApiClient(session, small_output_cluster.api, token=small_output_cluster.token)
    value = "cut-" + secrets.token_urlsafe(24)  # 36 characters
    status, body, _ = await api.request("PUT", "/api/v1/secrets/CUT_ME", json={"value": value})
    assert status == 201, body
    tail = "y" * 40
    # The value starts `before` characters ahead of the limit: 1, 4, half of it, all but 1.
    befores = (1, 4, len(value) // 2, len(value) - 1)
    created = [await api.create({
        "name": f"straddle-{before}", "schedule": "immediate", "kind": "shell",
        "shell": {"argv": ["/bin/sh", "-c", 'printf %s%s%s "$PAD" "$X" "$TAIL"'],
                  "env": {"PAD": "x" * (CUT_LIMIT - before), "X": {"secret": "CUT_ME"},
                          "TAIL": tail}}}) for before in befores]
    runs = await asyncio.gather(*(api.wait_terminal(job["id"], timeout=40)
                                  for job in created))
    for before, run in zip(befores, runs, strict=True):
        assert run["state"] == "succeeded", run
        output = run["output"]
        kept, _, note = output.partition("\n[output truncated: ")
        assert note, run  # the limit did cut this output
        assert kept == ("x" * (CUT_LIMIT - before) + "***" + tail)[:CUT_LIMIT], run
        for n in range(MIN_MASKED_LENGTH, len(value) + 1):
            assert value[:n] not in output, (before, n, output)
    conn = await asyncpg.connect(small_output_cluster.database_url)
    try:
        rows = await conn.fetch("SELECT coalesce(output, '') AS o FROM attempts")
        assert len(rows) == len(befores)
        assert all(value[:MIN_MASKED_LENGTH] not in r["o"] for r in rows)
    finally:
        await conn.close()
