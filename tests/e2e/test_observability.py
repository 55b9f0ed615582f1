"""Metrics and logs of real role processes: /metrics parses and moves; logs are JSON lines
that carry an execution's id through its life."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobsched_dev.api_client import ApiClient
from tests.e2e.conftest import LocalCluster, RoleProcess

pytestmark = pytest.mark.timeout(90)

Observed = tuple[LocalCluster, dict[str, RoleProcess]]


def scrape(port: int) -> dict[str, float]:
    """Every sample as ``name{labels}`` -> value, parsed by Prometheus' own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.startswith(name + "{") and all(w in k for w in wanted))


@pytest.fixture
async def observed(local_cluster: LocalCluster) -> AsyncIterator[Observed]:
    json_logs = {"JOBSCHED_LOG_FORMAT": "json"}
    procs = {
        "scheduler": local_cluster.start("scheduler", **json_logs),
        "worker": local_cluster.start("worker", extra=("--import", "sample_tasks"), **json_logs),
        "api": local_cluster.start("api", **json_logs),
    }
    yield local_cluster, procs


async def test_metrics_parse_and_move(observed: Observed) -> None:
    cluster, procs = observed
    before = {role: scrape(p.port) for role, p in procs.items()}
    assert total(before["scheduler"], "jobsched_scheduler_is_leader") == 1
    assert total(before["worker"], "jobsched_worker_executions_total") == 0
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        ok = await api.create({"name": "m", "schedule": "immediate", "kind": "python",
                               "python": {"function": "sample_tasks:noop"}})
        bad = await api.create({"name": "f", "schedule": "immediate", "kind": "python",
                                "python": {"function": "sample_tasks:always_fails"}})
        await api.wait_terminal(ok["id"])
        await api.wait_terminal(bad["id"])
        await api.request("GET", "/api/v1/jobs/not-a-uuid")
    await asyncio.sleep(0.2)
    after = {role: scrape(p.port) for role, p in procs.items()}
    assert total(after["scheduler"], "jobsched_scheduler_fires_total", state="queued") >= 2
    assert total(after["scheduler"], "jobsched_scheduler_fire_lateness_seconds_count") >= 2
    assert total(after["worker"], "jobsched_worker_executions_total", kind="python",
                 outcome="succeeded") == 1
    assert total(after["worker"], "jobsched_worker_executions_total", kind="python",
                 outcome="failed") == 1
    assert total(after["worker"], "jobsched_worker_dead_lettered_total") == 1
    assert total(after["worker"], "jobsched_worker_start_lateness_seconds_count") == 2
    assert total(after["api"], "jobsched_api_requests_total", route="/api/v1/jobs",
                 method="POST", status="201") == 2
    assert total(after["api"], "jobsched_api_requests_total", route="/api/v1/jobs/{id}",
                 status="404") == 1
    assert total(after["api"], "jobsched_api_request_duration_seconds_count") >= 3


async def test_logs_are_json_lines_with_the_execution_id(
    observed: Observed,
) -> None:
    cluster, procs = observed
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        job = await api.create({"name": "l", "schedule": "immediate", "kind": "shell",
                                "shell": {"argv": ["/bin/true"],
                                          "env": {"SECRETISH": "env-value-must-not-leak"}}})
        execution = await api.wait_terminal(job["id"])
    await asyncio.sleep(0.2)
    for role, proc in procs.items():
        lines = proc.log_path.read_text().splitlines()
        assert lines, role
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"time", "level", "role", "instance", "event"} <= e.keys() for e in entries)
        assert all("env-value-must-not-leak" not in line for line in lines)
    worker_entries = [json.loads(line) for line in
                      procs["worker"].log_path.read_text().splitlines()]
    mine = [e for e in worker_entries if e.get("execution_id") == execution["id"]]
    assert mine and mine[0]["job_id"] == job["id"] and mine[0]["attempt"] == "1"


async def test_worker_metrics_carry_the_priority_band(observed: Observed) -> None:
    """Issue 15's metrics per band: a run of each band is counted under its own
    ``priority`` label, in the start lateness histogram and the waiting gauge."""
    cluster, procs = observed
    bands = {"high": 1, "normal": 2, "low": 3}  # runs per band: each count tells its band
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        jobs = [
            await api.create({"name": f"{band}-{i}", "schedule": "immediate",
                              "kind": "python", "priority": band,
                              "python": {"function": "sample_tasks:noop"}})
            for band, runs in bands.items() for i in range(runs)
        ]
        for job in jobs:
            assert (await api.wait_terminal(job["id"]))["state"] == "succeeded"
    await asyncio.sleep(0.2)
    samples = scrape(procs["worker"].port)
    counts = {k: v for k, v in samples.items()
              if k.startswith("jobsched_worker_start_lateness_seconds_count{")}
    assert counts == {f'jobsched_worker_start_lateness_seconds_count{{priority="{band}"}}': runs
                      for band, runs in bands.items()}
    for band in bands:
        assert f'jobsched_worker_waiting{{priority="{band}"}}' in samples, band
