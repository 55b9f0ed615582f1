"""Idempotency-Key, the per-namespace quota and the per-token rate limit, through real
api processes on one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = pytest.mark.timeout(90)

JOB: dict[str, Any] = {"name": "idem", "schedule": "0 0 1 1 *", "kind": "python",
                       "python": {"function": "sample_tasks:add", "args": {"a": 1, "b": 2}}}
QUOTA = 5


class Apis:
    """Three api processes on one database: the defaults, a quota, a rate limit."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.main = cluster.start("api").url
        self.quota = cluster.start("api", JOBSCHED_MAX_ACTIVE_JOBS=str(QUOTA)).url
        self.limited = cluster.start("api", JOBSCHED_RATE_LIMIT_PER_S="2",
                                     JOBSCHED_RATE_LIMIT_BURST="4").url


@pytest.fixture(scope="module")
def limits_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                   template_db: str) -> Iterator[tuple[LocalCluster, Apis]]:
    cluster = _new_cluster(tmp_path_factory.mktemp("limits"), zookeeper, template_db)
    apis = Apis(cluster)
    yield cluster, apis
    _teardown(cluster)


@pytest.fixture
async def api(limits_cluster: tuple[LocalCluster, Apis]) -> AsyncIterator[ApiClient]:
    cluster, apis = limits_cluster
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, apis.main, token=cluster.token)


async def create(api: ApiClient, job: Any, key: str | None) -> tuple[int, Any, Any]:
    """POST the job with an Idempotency-Key (if given): status, body, headers."""
    reply = await api.call("POST", "/api/v1/jobs", json=job,
                           headers={"Idempotency-Key": key} if key else {})
    return reply.status, reply.body, reply.headers


async def test_same_key_and_body_answer_the_first_job(api: ApiClient) -> None:
    status, first, headers = await create(api, JOB, "order-1")
    assert status == 201 and "Idempotent-Replayed" not in headers
    # the same job spelled differently (key order, an explicit default) is the same body
    same = {"python": {"args": {"b": 2, "a": 1}, "function": "sample_tasks:add"},
            "kind": "python", "schedule": "0 0 1 1 *", "name": "idem", "timezone": "UTC"}
    for body in (JOB, same):
        status, again, headers = await create(api, body, "order-1")
        assert status == 200, again
        assert headers["Idempotent-Replayed"] == "true"
        assert headers["Location"] == f"/api/v1/jobs/{first['id']}"
        assert again["id"] == first["id"] and again["created_at"] == first["created_at"]
    status, page, _ = await api.request("GET", "/api/v1/jobs?name=idem")
    assert [j["id"] for j in page["items"]] == [first["id"]]


async def test_same_key_with_another_body_is_409(api: ApiClient) -> None:
    status, first, _ = await create(api, JOB, "order-2")
    assert status == 201
    changed = {**JOB, "python": {"function": "sample_tasks:add", "args": {"a": 1, "b": 3}}}
    status, problem, headers = await create(api, changed, "order-2")
    assert status == 409, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert first["id"] in problem["detail"]
    status, _, _ = await create(api, changed, "order-2b")  # a new key is a new job
    assert status == 201


async def test_keys_are_per_namespace(
    api: ApiClient, limits_cluster: tuple[LocalCluster, Apis]
) -> None:
    cluster, _ = limits_cluster
    status, mine, _ = await create(api, JOB, "shared-key")
    assert status == 201
    other = ApiClient(api.session, api.base, token=cluster.create_token(namespace="elsewhere"))
    status, theirs, _ = await create(other, JOB, "shared-key")
    assert status == 201 and theirs["id"] != mine["id"]


async def test_concurrent_creates_with_one_key_make_one_job(api: ApiClient) -> None:
    results = await asyncio.gather(*(create(api, JOB, "race-1") for _ in range(12)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 11 + [201], [r[1] for r in results]
    assert len({body["id"] for _, body, _ in results}) == 1


async def test_a_key_is_kept_24h_then_released(
    api: ApiClient, limits_cluster: tuple[LocalCluster, Apis]
) -> None:
    cluster, _ = limits_cluster
    status, first, _ = await create(api, JOB, "aging")
    assert status == 201
    conn = await asyncpg.connect(cluster.database_url)
    try:
        age = "UPDATE jobs SET created_at = now() - $2::text::interval WHERE id = $1::uuid"
        await conn.execute(age, first["id"], "23 hours 59 minutes")
        status, again, _ = await create(api, JOB, "aging")
        assert status == 200 and again["id"] == first["id"]
        await conn.execute(age, first["id"], "24 hours 1 minute")
        status, fresh, _ = await create(api, JOB, "aging")
        assert status == 201 and fresh["id"] != first["id"]
    finally:
        await conn.close()


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9"])
async def test_malformed_keys_are_400(api: ApiClient, key: str) -> None:
    reply = await api.call("POST", "/api/v1/jobs", json=JOB, headers={"Idempotency-Key": key})
    assert reply.status == 400, reply.body
    assert reply.body["errors"][0]["field"] == "Idempotency-Key"


async def test_quota_of_live_jobs_per_namespace(
    limits_cluster: tuple[LocalCluster, Apis]
) -> None:
    cluster, apis = limits_cluster
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, apis.quota,
                  token=cluster.create_token(namespace="quota"))
        status, keyed, _ = await create(api, JOB, "quota-key")
        assert status == 201
        made = [keyed] + [await api.create(JOB) for _ in range(QUOTA - 1)]
        status, problem, content_type = await api.request("POST", "/api/v1/jobs", json=JOB)
        assert status == 403 and content_type == "application/problem+json", problem
        assert problem["title"] == "Quota exceeded"
        assert f"already has {QUOTA} active or paused jobs" in problem["detail"]
        # paused jobs still count; cancelled ones free a place
        await api.request("POST", f"/api/v1/jobs/{made[0]['id']}/pause")
        status, _, _ = await api.request("POST", "/api/v1/jobs", json=JOB)
        assert status == 403
        await api.request("DELETE", f"/api/v1/jobs/{made[1]['id']}")
        await api.create(JOB)
        # a replay makes no new job, so it needs no room under the quota
        status, again, _ = await create(api, JOB, "quota-key")
        assert status == 200 and again["id"] == keyed["id"]
        # another namespace has a quota of its own
        other = ApiClient(session, api.base, token=cluster.create_token(namespace="quota2"))
        await other.create(JOB)


async def test_concurrent_creates_respect_the_quota(
    limits_cluster: tuple[LocalCluster, Apis]
) -> None:
    cluster, apis = limits_cluster
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, apis.quota,
                  token=cluster.create_token(namespace="quota-race"))
        results = await asyncio.gather(*(
            api.request("POST", "/api/v1/jobs", json=JOB) for _ in range(20)))
        assert sorted(r[0] for r in results) == [201] * QUOTA + [403] * (20 - QUOTA)


async def test_rate_limit_per_token_with_retry_after(
    limits_cluster: tuple[LocalCluster, Apis]
) -> None:
    cluster, apis = limits_cluster
    first, second = cluster.token, cluster.create_token(name="second")
    async with aiohttp.ClientSession() as session:
        async def get(token: str) -> tuple[int, Any]:
            reply = await ApiClient(session, apis.limited, token=token).call(
                "GET", "/api/v1/jobs?limit=1")
            return reply.status, (reply.headers.get("Retry-After"), reply.body)

        statuses = [(await get(first))[0] for _ in range(4)]  # the burst
        assert statuses == [200] * 4
        status, (retry_after, problem) = await get(first)
        assert status == 429, problem
        assert retry_after is not None and int(retry_after) >= 1
        assert "2 requests/s" in problem["detail"]
        assert (await get(second))[0] == 200  # each token has a bucket of its own
        started = time.monotonic()
        for _ in range(100):
            if (await get(first))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert time.monotonic() - started <= int(retry_after) + 0.5  # Retry-After was true
