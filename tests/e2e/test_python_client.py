"""``jobsched.Client`` and ``SyncClient`` against a real running cluster."""

from __future__ import annotations

import pytest

from jobsched import ApiError, Client, ConnectionFailed, SyncClient, task
from jobsched_dev.processes import free_port
from tests.e2e import sample_tasks
from tests.e2e.conftest import LocalCluster
from tests.e2e.tokens import admin_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


async def test_schedule_a_task_by_cron_and_watch_it_succeed(
    running_cluster: LocalCluster, token: str,
) -> None:
    async with Client(running_cluster.api, token=token) as client:
        job = await client.schedule(sample_tasks.report, cron="* * * * * *",
                                    timezone="Europe/Berlin",
                                    args={"team": "billing", "count": 2},
                                    retry={"max_attempts": 2})
        try:
            assert job["kind"] == "python" and job["name"] == "report"
            assert job["python"] == {"function": "sample_tasks:report",
                                     "args": {"team": "billing", "count": 2}}
            assert (job["schedule"], job["timezone"]) == ("* * * * * *", "Europe/Berlin")
            execution = await client.wait_first_execution(job["id"], interval=0.1, timeout=10)
            assert execution["state"] == "succeeded", execution
            assert execution["output"] == '{"team":"billing","count":2}'
            attempts = execution.get("attempts") or []
            assert [a["outcome"] for a in attempts] == ["succeeded"]
        finally:
            cancelled = await client.cancel_job(job["id"])
        assert cancelled["state"] == "cancelled"


async def test_create_trigger_watch_and_the_job_controls(
    running_cluster: LocalCluster, token: str,
) -> None:
    async with Client(running_cluster.api, token) as client:
        job = await client.create_job({
            "name": "py-client", "schedule": "0 0 1 1 *", "kind": "shell",
            "shell": {"argv": ["/bin/sh", "-c", "echo from the client"]}})
        assert (await client.get_job(job["id"]))["name"] == "py-client"
        assert (await client.pause_job(job["id"]))["state"] == "paused"
        assert (await client.resume_job(job["id"]))["state"] == "active"
        changed = await client.update_job(job["id"], {"labels": {"via": "client"}})
        assert changed["labels"] == {"via": "client"}
        execution = await client.trigger_job(job["id"])
        seen = [e["state"] async for e in client.watch_execution(execution["id"], interval=0.1,
                                                                 timeout=10)]
        assert seen[-1] == "succeeded" and len(seen) == len(set(seen))
        finished = await client.get_execution(execution["id"])
        assert finished["output"] == "from the client\n"
        page = await client.list_executions(job["id"])
        assert [e["id"] for e in page["items"]] == [execution["id"]]
        listed = [j["id"] async for j in client.iter_jobs(labels={"via": "client"}, page_size=1)]
        assert listed == [job["id"]]
        fires = await client.preview_schedule("0 9 * * *", "Europe/Berlin", count=3)
        assert len(fires) == 3 and all(f["local"].endswith(("+01:00", "+02:00")) for f in fires)
        status = await client.cluster()
        assert status["leader"] is not None and status["workers"]
        await client.cancel_job(job["id"])


async def test_errors_carry_the_problem_details(
    running_cluster: LocalCluster, token: str,
) -> None:
    async with Client(running_cluster.api, token) as client:
        with pytest.raises(ApiError) as invalid:
            await client.create_job({"name": "bad", "schedule": "0 0 30 2 *", "kind": "shell",
                                     "shell": {"argv": []}})
        error = invalid.value
        assert error.status == 422 and error.invalid and not error.not_found
        assert error.title == "Invalid job"
        fields = {e["field"] for e in error.errors}
        assert {"shell.argv"} <= fields, error.errors
        assert str(error).startswith("422 Invalid job: ")
        with pytest.raises(ApiError) as missing:
            await client.get_job("00000000-0000-4000-8000-000000000000")
        assert missing.value.not_found and missing.value.title == "Not found"
        with pytest.raises(ApiError) as preview:
            await client.preview_schedule("61 * * * *")
        assert preview.value.errors[0]["field"] == "schedule"

    async with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(ConnectionFailed, match="connection refused"):
            await client.list_jobs()


async def test_schedule_needs_a_registered_task(
    running_cluster: LocalCluster, token: str,
) -> None:
    def plain() -> None: ...

    async with Client(running_cluster.api, token) as client:
        with pytest.raises(TypeError, match="is not a @task"):
            await client.schedule(plain, cron="* * * * *")
        with pytest.raises(ValueError, match="at most one of"):
            await client.schedule(sample_tasks.report, cron="* * * * *", every=5)


def test_sync_client_runs_a_task_once(running_cluster: LocalCluster, token: str) -> None:
    @task(name="sample_tasks:add")
    def add(a: int, b: int) -> dict[str, int]:  # the worker's sample_tasks:add, by name
        return {"sum": a + b}

    with SyncClient(running_cluster.api, token) as client:
        job = client.schedule(add, args={"a": 20, "b": 22})
        assert job["schedule"] == "immediate"
        execution = client.wait_first_execution(job["id"], interval=0.1, timeout=10)
        assert execution["state"] == "succeeded" and execution["output"] == '{"sum":42}'
        assert client.get_job(job["id"])["state"] == "completed"
        assert client.cluster()["leader"] is not None
