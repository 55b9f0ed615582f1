"""Workflows from the two clients against a real running cluster: ``jobsched workflows``
(a YAML file, a watched run, retry, cancel, exit codes) and a workflow defined in Python
from ``@task`` functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobsched import Client, Workflow
from tests.e2e import sample_tasks
from tests.e2e.conftest import LocalCluster
from tests.e2e.test_cli_client import as_json, cli, ok
from tests.e2e.tokens import admin_token

pytestmark = pytest.mark.timeout(90)

FLOW_YAML = """\
name: yaml-diamond
labels: {team: data}
nodes:
  - key: numbers
    kind: python
    python: {function: "sample_tasks:numbers", args: {count: 3}}
  - key: double
    depends_on: [numbers]
    kind: python
    python: {function: "sample_tasks:scale", args: {factor: 2}}
  - key: triple
    depends_on: [numbers]
    kind: python
    python: {function: "sample_tasks:scale", args: {factor: 3}}
  - key: total
    depends_on: [double, triple]
    kind: python
    python: {function: "sample_tasks:total"}
"""

FLAKY_JSON = {
    "name": "cli-flaky",
    "nodes": [
        {"key": "flaky", "kind": "python",
         "python": {"function": "sample_tasks:fails_first_attempt"}},
        {"key": "after", "depends_on": ["flaky"], "kind": "python",
         "python": {"function": "sample_tasks:upstream_keys"}},
    ],
}


def test_the_cli_creates_runs_watches_and_retries(running_cluster: LocalCluster,
                                                  tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW_YAML)
    created = as_json(cli(running_cluster, "workflows", "create", "-f", str(flow), "-o", "json"))
    assert created["node_count"] == 4 and created["labels"] == {"team": "data"}
    shown = ok(cli(running_cluster, "workflows", "get", created["id"]))
    assert "numbers" in shown and "double,triple" in shown

    watched = cli(running_cluster, "workflows", "run", created["id"], "--input",
                  '{"offset": 1}', "--watch")
    out = ok(watched)
    assert "total" in out and out.strip().splitlines()[-1].endswith("succeeded")
    runs = as_json(cli(running_cluster, "workflows", "runs", created["id"], "-o", "json"))
    [run] = runs["items"]
    detail = as_json(cli(running_cluster, "workflows", "get", "--run", run["id"], "-o", "json"))
    assert [n["state"] for n in detail["nodes"]] == ["succeeded"] * 4
    assert detail["input"] == {"offset": 1}
    listed = ok(cli(running_cluster, "workflows", "list", "--name", "yaml-diamond"))
    assert created["id"] in listed

    flaky = tmp_path / "flaky.json"
    flaky.write_text(json.dumps(FLAKY_JSON))
    second = as_json(cli(running_cluster, "workflows", "create", "-f", str(flaky), "-o", "json"))
    failed = cli(running_cluster, "workflows", "run", second["id"], "--watch")
    assert failed.returncode == 5, (failed.stdout, failed.stderr)  # the run failed
    [failed_run] = as_json(cli(running_cluster, "workflows", "runs", second["id"],
                               "-o", "json"))["items"]
    retried = cli(running_cluster, "workflows", "retry", failed_run["id"], "--watch")
    assert ok(retried).strip().splitlines()[-1].endswith("succeeded")
    again = cli(running_cluster, "workflows", "retry", failed_run["id"])
    assert again.returncode == 1 and "Nothing to retry" in again.stderr

    missing = cli(running_cluster, "workflows", "get", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - {key: a, depends_on: [a], kind: python, "
                   "python: {function: 'm:f'}}\n")
    refused = cli(running_cluster, "workflows", "create", "-f", str(bad))
    assert refused.returncode == 2 and "nodes[0].depends_on: cycle: a → a" in refused.stderr
    cancelled = as_json(cli(running_cluster, "workflows", "cancel", second["id"], "-o", "json"))
    assert cancelled["state"] == "cancelled"


async def test_a_workflow_defined_in_python(running_cluster: LocalCluster) -> None:
    flow = Workflow("python-defined", labels={"from": "code"})
    numbers = flow.node(sample_tasks.numbers, args={"count": 4})
    doubled = flow.node(sample_tasks.scale, key="doubled", after=[numbers], args={"factor": 2})
    tripled = flow.node(sample_tasks.scale, key="tripled", after=[numbers], args={"factor": 3})
    flow.node(sample_tasks.total, after=[doubled, tripled], trigger_rule="all_done")
    with pytest.raises(ValueError, match="exists already"):
        flow.node(sample_tasks.total)
    async with Client(running_cluster.api, token=admin_token(running_cluster)) as client:
        created = await client.create_workflow(flow)
        assert [n["key"] for n in created["nodes"] or []] == ["numbers", "doubled", "tripled",
                                                              "total"]
        run = await client.start_run(created["id"], input={"offset": 10})
        run = await client.wait_run(run["id"], interval=0.1, timeout=30)
        assert run["state"] == "succeeded", run
        total = next(n for n in run["nodes"] or [] if n["key"] == "total")
        execution = await client.get_execution(total["execution_id"] or "")
        # 0..3 = 6; doubled 12, tripled 18; + offset 10
        assert execution.get("result") == {"total": 40, "from": ["doubled", "tripled"]}
        page = await client.list_runs(created["id"])
        assert [r["id"] for r in page["items"]] == [run["id"]]
        assert (await client.cancel_workflow(created["id"]))["state"] == "cancelled"
