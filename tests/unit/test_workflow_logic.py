"""Workflows as pure logic: the graph checks and how they are reported, the four trigger
rules, node and run outcomes, and what a python node is given and returns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from jobsched.api.models import WorkflowCreate
from jobsched.api.problems import validation_errors
from jobsched.domain.states import ExecutionState
from jobsched.domain.workflows import (
    Decision,
    GraphError,
    NodeState,
    ParentCounts,
    RunState,
    TriggerRule,
    build_graph,
    decide,
    node_outcome,
    run_outcome,
)
from jobsched.ports import NodeInputs
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.worker.python import run_python

# --- the graph ---------------------------------------------------------------------------


def test_a_dag_is_indexed_in_an_order_parents_first() -> None:
    graph = build_graph(["a", "b", "c", "d"], [[], ["a"], ["a"], ["b", "c"]])
    assert graph.parents == ((), (0,), (0,), (1, 2))
    assert graph.children == ((1, 2), (3,), (3,), ())
    assert graph.roots == [0]
    position = {node: i for i, node in enumerate(graph.order)}
    for child, parents in enumerate(graph.parents):
        assert all(position[p] < position[child] for p in parents)
    assert graph.descendants([1]) == {1, 3}


@pytest.mark.parametrize(("keys", "depends_on", "index", "field", "reason"), [
    (["a", "b", "c"], [["c"], ["a"], ["b"]], 0, "depends_on", "cycle: a → b → c → a"),
    (["x", "b", "a"], [[], ["a"], ["b"]], 1, "depends_on", "cycle: b → a → b"),
    (["a"], [["a"]], 0, "depends_on", "cycle: a → a"),
    (["a", "b"], [[], ["nope"]], 1, "depends_on", "unknown key 'nope'"),
    (["a", "a"], [[], []], 1, "key", "duplicate key 'a' (also node 0)"),
    (["a", "b"], [[], ["a", "a"]], 1, "depends_on", "'a' is listed twice"),
])
def test_what_is_not_a_dag_is_named(keys: list[str], depends_on: list[list[str]], index: int,
                                    field: str, reason: str) -> None:
    with pytest.raises(GraphError) as raised:
        build_graph(keys, depends_on)
    assert (raised.value.index, raised.value.field, raised.value.reason) == (index, field,
                                                                             reason)


def test_a_cycle_in_a_large_graph_is_named_by_its_path() -> None:
    keys = [f"n{i}" for i in range(5000)]
    depends_on = [[f"n{i - 1}"] if i else [] for i in range(5000)]
    depends_on[10] = ["n9", "n4000"]  # n10 → ... → n4000 → n10
    with pytest.raises(GraphError) as raised:
        build_graph(keys, depends_on)
    path = raised.value.reason.removeprefix("cycle: ").split(" → ")
    assert path[0] == path[-1] == "n10" and len(path) == 3992
    assert raised.value.index == 10


def _invalid(body: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as raised:
        WorkflowCreate.model_validate_json(orjson.dumps(body))
    return validation_errors(raised.value)


def _node(key: str, *parents: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "depends_on": list(parents), "kind": "python",
            "python": {"function": "m:f", "args": {}}, **extra}


def test_a_workflow_that_is_not_a_dag_is_a_422_naming_the_node() -> None:
    assert _invalid({"name": "w", "nodes": [_node("a", "b"), _node("b", "a")]}) == [
        {"field": "nodes[0].depends_on", "reason": "cycle: a → b → a"}]
    assert _invalid({"name": "w", "nodes": [_node("a"), _node("b", "zz")]}) == [
        {"field": "nodes[1].depends_on", "reason": "node 'b': unknown key 'zz'"}]
    assert _invalid({"name": "w", "nodes": [_node("a"), _node("a")]}) == [
        {"field": "nodes[1].key", "reason": "node 'a': duplicate key 'a' (also node 0)"}]


def test_node_fields_are_checked_like_a_jobs() -> None:
    errors = _invalid({"name": "w", "nodes": [
        {"key": "a", "kind": "shell", "python": {"function": "m:f"}}]})
    assert errors[0]["field"].startswith("nodes[0].")
    errors = _invalid({"name": "w", "nodes": [_node("a", priority="urgent")]})
    assert errors[0]["field"] == "nodes[0].priority"
    errors = _invalid({"name": "w", "nodes": [_node("a", trigger_rule="any")]})
    assert errors[0]["field"] == "nodes[0].trigger_rule"
    errors = _invalid({"name": "w", "nodes": [_node("a", schedule="* * * * *")]})
    assert errors == [{"field": "nodes[0].schedule", "reason": "unknown field"}]
    errors = _invalid({"name": "w", "nodes": [
        {**_node("a"), "python": {"function": "m:f", "args": {"input": 1}}}]})
    assert errors == [{"field": "nodes[0].python.args.input",
                       "reason": "'input' is passed by the workflow run, not by args"}]
    assert _invalid({"name": "w", "nodes": []})[0]["field"] == "nodes"
    assert _invalid({"name": "w", "schedule": "61 * * * *",
                     "nodes": [_node("a")]})[0]["field"] == "schedule"


def test_a_node_carries_what_a_job_does_with_defaults() -> None:
    workflow = WorkflowCreate.model_validate_json(orjson.dumps({
        "name": "w", "nodes": [_node("a"), _node("b", "a", retry={"max_attempts": 3},
                                                 priority="high", labels={"t": "x"})]}))
    a, b = workflow.nodes
    assert a.trigger_rule == "all_success" and a.retry.max_attempts == 1
    assert a.priority == "normal" and a.depends_on == [] and a.timeout_s == 300
    assert b.retry.max_attempts == 3 and b.priority == "high" and b.labels == {"t": "x"}
    assert workflow.schedule is None


# --- trigger rules -----------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "counts", "decision"), [
    # all_success: every parent succeeded; a failure (or skip) decides at once
    ("all_success", ParentCounts(2, 1, 1), Decision.WAIT),
    ("all_success", ParentCounts(2, 2, 2), Decision.RUN),
    ("all_success", ParentCounts(3, 1, 0, failed=1), Decision.UPSTREAM_FAILED),
    ("all_success", ParentCounts(3, 1, 0, skipped=1), Decision.SKIPPED),
    ("all_success", ParentCounts(3, 2, 0, failed=1, skipped=1), Decision.UPSTREAM_FAILED),
    # all_done: whatever the outcomes, once all are finished
    ("all_done", ParentCounts(2, 1, 0, failed=1), Decision.WAIT),
    ("all_done", ParentCounts(2, 2, 0, failed=1, skipped=1), Decision.RUN),
    # none_failed: all finished, none failed; skips are fine
    ("none_failed", ParentCounts(2, 2, 1, skipped=1), Decision.RUN),
    ("none_failed", ParentCounts(3, 1, 0, failed=1), Decision.UPSTREAM_FAILED),
    ("none_failed", ParentCounts(2, 1, 1), Decision.WAIT),
    # one_success: the first success runs it; all finished without one fails it
    ("one_success", ParentCounts(3, 1, 1), Decision.RUN),
    ("one_success", ParentCounts(2, 1, 0, failed=1), Decision.WAIT),
    ("one_success", ParentCounts(2, 2, 0, failed=1, skipped=1), Decision.UPSTREAM_FAILED),
])
def test_trigger_rules(rule: str, counts: ParentCounts, decision: Decision) -> None:
    assert decide(rule, counts) == decision


def test_a_root_runs_at_once_under_every_rule() -> None:
    for rule in TriggerRule:
        assert decide(rule, ParentCounts(0)) == Decision.RUN


def test_node_and_run_outcomes() -> None:
    assert node_outcome(ExecutionState.SUCCEEDED) == NodeState.SUCCEEDED
    assert node_outcome(ExecutionState.DEAD) == NodeState.FAILED
    assert node_outcome(ExecutionState.CANCELLED) == NodeState.CANCELLED
    assert node_outcome(ExecutionState.MISSED) == NodeState.SKIPPED
    assert node_outcome(ExecutionState.RETRYING) is None
    assert run_outcome(["succeeded", "skipped"]) == RunState.SUCCEEDED
    assert run_outcome(["succeeded", "upstream_failed"]) == RunState.FAILED
    assert run_outcome(["failed", "cancelled"]) == RunState.CANCELLED


# --- a python node -----------------------------------------------------------------------


def _asks_for_everything(upstream: dict[str, Any], input: dict[str, Any],
                         context: TaskContext, scale: int) -> dict[str, Any]:
    return {"sum": sum(upstream.values()) * scale, "input": input,
            "attempt": context.attempt}


def _asks_for_nothing() -> str:
    return "plain"


def _returns_a_set() -> set[int]:
    return {1}


def _returns_a_lot() -> str:
    return "x" * 5000


REGISTRY = TaskRegistry()
for function in (_asks_for_everything, _asks_for_nothing, _returns_a_set, _returns_a_lot):
    REGISTRY.register(function, f"t:{function.__name__}")
CONTEXT = TaskContext(uuid.uuid4(), 1, uuid.uuid4(), datetime.now(UTC))
INPUTS = NodeInputs({"day": 1}, {"a": 2, "b": 3}, datetime.now(UTC))


async def test_a_node_gets_upstream_and_input_when_it_asks_for_them() -> None:
    result = await run_python({"function": "t:_asks_for_everything", "args": {"scale": 10}},
                              5, 1000, REGISTRY, CONTEXT, node=INPUTS)
    assert result.outcome == "succeeded", result
    assert orjson.loads(result.result or "") == {"sum": 50, "input": {"day": 1}, "attempt": 1}
    plain = await run_python({"function": "t:_asks_for_nothing"}, 5, 1000, REGISTRY, CONTEXT,
                             node=INPUTS)
    assert plain.result == '"plain"'
    job = await run_python({"function": "t:_asks_for_nothing"}, 5, 1000, REGISTRY, CONTEXT)
    assert job.result is None and job.output == '"plain"'  # not a node: nothing kept


async def test_a_node_returns_json_within_the_output_limit() -> None:
    not_json = await run_python({"function": "t:_returns_a_set"}, 5, 1000, REGISTRY, CONTEXT,
                                node=INPUTS)
    assert not_json.outcome == "failed" and "not JSON" in (not_json.error or "")
    too_big = await run_python({"function": "t:_returns_a_lot"}, 5, 1000, REGISTRY, CONTEXT,
                               node=INPUTS)
    assert too_big.outcome == "failed" and "output_limit_bytes=1000" in (too_big.error or "")


def _returns_a_credential() -> dict[str, str]:
    return {"token": "s3cr3t-value-of-the-worker", "other": "kept"}


REGISTRY.register(_returns_a_credential, "t:_returns_a_credential")


async def test_a_node_result_is_masked_as_output_is() -> None:
    result = await run_python({"function": "t:_returns_a_credential"}, 5, 1000, REGISTRY,
                              CONTEXT, masked=["s3cr3t-value-of-the-worker"], node=INPUTS)
    assert result.outcome == "succeeded"
    assert orjson.loads(result.result or "") == {"token": "***", "other": "kept"}


# --- one definition of each state ----------------------------------------------------------


def test_the_schema_allows_exactly_the_workflow_enums() -> None:
    import re

    from jobsched.adapters.postgres.migrate import migration_files
    from jobsched.domain.workflows import WorkflowState

    sql = next(s for _, name, s in migration_files() if name.endswith("_workflows.sql"))

    def allowed(table: str, column: str) -> set[str]:
        body = sql[sql.index(f"CREATE TABLE {table} ("):]
        body = body[:body.index(");\n")]
        match = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", body)
        assert match is not None, (table, column)
        return set(re.findall(r"'([a-z_]+)'", match.group(1)))

    assert allowed("workflows", "state") == {s.value for s in WorkflowState}
    assert allowed("workflow_runs", "state") == {s.value for s in RunState}
    assert allowed("workflow_nodes", "trigger_rule") == {r.value for r in TriggerRule}
    # 'running' is shown, not stored: a node whose execution is running is 'queued'.
    assert allowed("workflow_run_nodes", "state") == {s.value for s in NodeState} - {"running"}


def test_a_forbid_or_replace_workflow_starts_one_run_per_tick() -> None:
    from datetime import timedelta

    from jobsched.domain.firing import FireRecord
    from jobsched.domain.workflows import one_run_at_a_time

    now = datetime.now(UTC)
    forbid, replace, allow = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fires = [FireRecord(w, now + timedelta(seconds=s)) for w in (forbid, replace, allow)
             for s in range(3)]
    out = one_run_at_a_time(fires, {forbid: "forbid", replace: "replace", allow: "allow"})
    states = [(f.job_id, f.state.value) for f in out]
    assert states == [(forbid, "queued"), (forbid, "skipped"), (forbid, "skipped"),
                      (replace, "skipped"), (replace, "skipped"), (replace, "queued"),
                      (allow, "queued"), (allow, "queued"), (allow, "queued")]
    assert "concurrency=forbid" in (out[1].reason or "")
    assert "concurrency=replace" in (out[3].reason or "")
