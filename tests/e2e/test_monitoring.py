"""The monitoring stack's files in config/ are valid, and a real Prometheus scrapes a
running cluster and answers a query over the fire-lateness histogram."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from jobsched.metrics import Metrics
from jobsched_dev.api_client import ApiClient
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(120)
CONFIG = ROOT / "config"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} missing: .ci/run installs the prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        result = subprocess.run([promtool, *args], cwd=CONFIG, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def _metric_names() -> set[str]:
    names = set()
    for collector in Metrics("test", "test").registry.get_all():
        names.add(collector.name)
        if collector.__class__.__name__ == "Histogram":
            names |= {f"{collector.name}_bucket", f"{collector.name}_count",
                      f"{collector.name}_sum"}
    return names


def _queried_metrics(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(jobsched_[a-z_]+)", expr)}


def test_every_dashboard_and_alert_query_names_a_metric_that_exists() -> None:
    known = _metric_names()
    dashboard = json.loads((CONFIG / "grafana/dashboards/jobsched.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 10
    for expr in exprs:
        used = _queried_metrics(expr)
        assert used or "up{" in expr, expr
        assert used <= known, (expr, used - known)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("lateness", "outcome", "queue", "leader", "workers"):
        assert needed in titles


@pytest.fixture
def prometheus(tmp_path: Path, local_cluster: LocalCluster) -> Iterator[tuple[str, LocalCluster]]:
    binary = _tool("prometheus")
    local_cluster.start("scheduler")
    local_cluster.start("worker", extra=("--import", "sample_tasks"))
    local_cluster.start("api")
    targets = [f"127.0.0.1:{p.port}" for p in local_cluster.processes]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(CONFIG / "alerts.yml")],
        "scrape_configs": [{"job_name": "jobsched-all",
                            "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}", local_cluster
    finally:
        process.terminate()
        process.wait(10)


async def test_prometheus_scrapes_the_cluster(prometheus: tuple[str, LocalCluster]) -> None:
    url, cluster = prometheus
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api, token=cluster.token)
        job = await api.create({"name": "tick", "schedule": "* * * * * *", "kind": "python",
                                "python": {"function": "sample_tasks:noop"}})
        query = "sum(jobsched_scheduler_fire_lateness_seconds_count)"
        deadline = time.monotonic() + 40
        value = 0.0
        while time.monotonic() < deadline and value < 3:
            await asyncio.sleep(1)
            try:
                async with session.get(f"{url}/api/v1/query", params={"query": query}) as r:
                    body = await r.json()
            except aiohttp.ClientError:
                continue
            result = body.get("data", {}).get("result", [])
            value = float(result[0]["value"][1]) if result else 0.0
        assert value >= 3, body
        quantile = ("histogram_quantile(0.99, sum by (le) "
                    "(rate(jobsched_scheduler_fire_lateness_seconds_bucket[30s])))")
        for _ in range(20):  # a rate needs two scrapes of the moving histogram
            async with session.get(f"{url}/api/v1/query", params={"query": quantile}) as r:
                body = await r.json()
            if body["data"]["result"]:
                break
            await asyncio.sleep(1)
        assert body["status"] == "success" and body["data"]["result"], body
        p99 = float(body["data"]["result"][0]["value"][1])
        assert 0 <= p99 < 1.0  # seconds: every-second fires are published well within 1 s
        async with session.get(f"{url}/api/v1/targets") as r:
            targets = (await r.json())["data"]["activeTargets"]
        assert len(targets) == 3 and all(t["health"] == "up" for t in targets), targets
        await api.request("DELETE", f"/api/v1/jobs/{job['id']}")
