"""``/api/v1/workflows`` and ``/api/v1/workflow-runs``: DAGs of nodes, their runs (started
by hand or on the workflow's schedule), cancel and retry of a run."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from jobsched.api.context import SETTINGS, WORKFLOWS, Abort, json_response, parse_query, uuid_param
from jobsched.api.models import (
    ListWorkflowsQuery,
    NodeRunOut,
    NodeSpec,
    PageQuery,
    RunStart,
    WorkflowCreate,
    WorkflowList,
    WorkflowOut,
    WorkflowRunList,
    WorkflowRunOut,
)
from jobsched.api.openapi import Operation
from jobsched.api.pagination import decode_cursor, page
from jobsched.api.problems import invalid, problem
from jobsched.api.routes.jobs import _idempotency_key, merge_patch
from jobsched.api.security import principal
from jobsched.domain.auth import Forbidden, Principal, check_kind
from jobsched.domain.firing import initial_fire_at, plan_resume
from jobsched.domain.schedule import parse_schedule
from jobsched.domain.workflows import (
    NodeState,
    RunState,
    WorkflowState,
    build_graph,
)
from jobsched.ports import (
    IdempotencyConflict,
    Row,
    WorkflowColumns,
    WorkflowDefinition,
    WorkflowNodes,
)

#: Fields of a workflow that decide when it fires: a PATCH of none keeps the pending fire.
TIMING_FIELDS = ("schedule", "timezone")
#: Bodies larger than this are validated on a thread, so the api's loop keeps serving.
VALIDATE_ON_THREAD_BYTES = 64 * 1024


# --- shapes ------------------------------------------------------------------------------


def run_out(row: Row, nodes: list[Row] | None = None) -> WorkflowRunOut:
    data = dict(row)
    if nodes is not None:
        keys = {n["node"]: n["key"] for n in nodes}
        data["nodes"] = [node_out(n, keys) for n in nodes]
    return WorkflowRunOut.model_validate(data)


def node_out(node: Row, keys: dict[int, str]) -> NodeRunOut:
    """A run's node; one whose execution is active shows that execution's state (an
    execution waiting for its next attempt is queued again)."""
    state = node["state"]
    if state == NodeState.QUEUED and node["execution_state"] == "running":
        state = NodeState.RUNNING
    return NodeRunOut(
        key=node["key"], state=state, execution_id=node["execution_id"],
        attempt=node["attempt"], started_at=node["started_at"],
        finished_at=node["finished_at"] or node["ended_at"],
        depends_on=[keys[p] for p in node["parents"]], trigger_rule=node["trigger_rule"],
        error=node["error"] if state == NodeState.FAILED else None)


def workflow_out(row: Row, *, with_nodes: bool = True) -> WorkflowOut:
    last = row.get("last_run")
    data: dict[str, Any] = {
        **row["spec"],
        "schedule": row["schedule"],
        "id": row["id"],
        "namespace": row["namespace"],
        "state": row["state"],
        "next_fire_at": row["next_fire_at"],
        "version": row["version"],
        "node_count": row["node_count"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "last_run": WorkflowRunOut.model_validate(last) if last else None,
    }
    if with_nodes:
        data["nodes"] = row["nodes"]
    return WorkflowOut.model_validate(data)


def workflow_definition(workflow: WorkflowCreate, now: datetime, *,
                        new_nodes: bool = True) -> WorkflowDefinition:
    """The stored columns of a workflow as submitted (its next fire computed from
    ``now``), and its nodes' job rows when they make a new version."""
    next_fire_at = None
    if workflow.schedule is not None:
        next_fire_at = initial_fire_at(parse_schedule(workflow.schedule, workflow.timezone),
                                       now)
    columns = WorkflowColumns(
        name=workflow.name, schedule=workflow.schedule, timezone=workflow.timezone,
        next_fire_at=next_fire_at, misfire=workflow.misfire,
        max_catchup=workflow.max_catchup, concurrency=workflow.concurrency,
        labels=workflow.labels,
        spec=workflow.model_dump(mode="json", exclude_none=True, exclude={"nodes"}),
        node_count=len(workflow.nodes))
    if not new_nodes:
        return WorkflowDefinition(columns, None)
    graph = build_graph([n.key for n in workflow.nodes],
                        [n.depends_on for n in workflow.nodes])
    nodes = WorkflowNodes(node_specs(workflow), list(graph.parents), list(graph.children))
    return WorkflowDefinition(columns, nodes)


_NODE_LIST = TypeAdapter(list[NodeSpec])


def node_specs(workflow: WorkflowCreate) -> list[dict[str, Any]]:
    """The nodes as stored and echoed back (one serializer call for all of them)."""
    specs: list[dict[str, Any]] = _NODE_LIST.dump_python(workflow.nodes, mode="json",
                                                         exclude_none=True)
    return specs


def body_digest(workflow: WorkflowCreate) -> bytes:
    return hashlib.sha256(orjson.dumps(workflow.model_dump(mode="json"),
                                       option=orjson.OPT_SORT_KEYS)).digest()


async def _read_body(request: web.Request) -> bytes:
    """The body, up to max_workflow_body_bytes (a 10,000-node workflow is larger than the
    limit of every other request)."""
    limit = request.app[SETTINGS].max_workflow_body_bytes
    too_large = problem(413, "Request body too large",
                        f"the limit of a workflow is {limit} bytes (max_workflow_body_bytes)")
    if request.content_length is not None and request.content_length > limit:
        raise Abort(too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise Abort(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


async def _validate(body: bytes, title: str) -> WorkflowCreate:
    try:
        if len(body) > VALIDATE_ON_THREAD_BYTES:
            return await asyncio.to_thread(WorkflowCreate.model_validate_json, body)
        return WorkflowCreate.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise Abort(invalid(exc, title)) from None


def _check_kinds(who: Principal, workflow: WorkflowCreate, disabled: tuple[str, ...]) -> None:
    """Each node as a job of its kind: disabled kinds refused, shell nodes admin only."""
    seen: set[str] = set()
    for index, node in enumerate(workflow.nodes):
        if node.kind in seen:
            continue
        seen.add(node.kind)
        try:
            check_kind(who, node.kind, disabled)
        except Forbidden as exc:
            raise Forbidden(exc.reason, f"nodes[{index}].kind") from None


# --- workflows ---------------------------------------------------------------------------


async def create_workflow(request: web.Request) -> web.Response:
    body = await _read_body(request)
    workflow = await _validate(body, "Invalid workflow")
    who = principal(request)
    settings = request.app[SETTINGS]
    _check_kinds(who, workflow, settings.disabled_kinds)
    key = _idempotency_key(request)
    definition = workflow_definition(workflow, datetime.now(UTC))
    try:
        row, replayed = await request.app[WORKFLOWS].create_workflow(
            uuid.uuid4(), who.namespace, definition, idempotency_key=key,
            digest=body_digest(workflow) if key else None,
            idempotency_ttl_s=settings.idempotency_ttl_s)
    except IdempotencyConflict as exc:
        return problem(409, "Idempotency-Key reused",
                       f"this key already created workflow {exc.job_id} from a different body",
                       [{"field": "Idempotency-Key",
                         "reason": "already used with a different body"}])
    response = json_response(workflow_out(row), 200 if replayed else 201)
    response.headers["Location"] = f"/api/v1/workflows/{row['id']}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def list_workflows(request: web.Request) -> web.Response:
    query: ListWorkflowsQuery = parse_query(request, ListWorkflowsQuery)
    labels = dict(item.split("=", 1) for item in query.label) or None
    after = decode_cursor(query.cursor)
    rows = await request.app[WORKFLOWS].list_workflows(
        principal(request).namespace, state=query.state, name=query.name, labels=labels,
        after=after, limit=query.limit + 1)
    items, cursor = page(rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return json_response(WorkflowList(items=[workflow_out(r, with_nodes=False) for r in items],
                                      next_cursor=cursor))


async def _workflow(request: web.Request) -> Row:
    row = await request.app[WORKFLOWS].get_workflow(uuid_param(request),
                                                    principal(request).namespace)
    if row is None:
        raise web.HTTPNotFound()
    return row


async def get_workflow(request: web.Request) -> web.Response:
    return json_response(workflow_out(await _workflow(request)))


async def patch_workflow(request: web.Request) -> web.Response:
    """Change a workflow by JSON merge patch (``nodes``, an array, is replaced whole); the
    result is validated as a new workflow. New nodes (or a new name, which their job rows
    carry) make a new version: runs started from then on use it."""
    workflow_id = uuid_param(request)
    body = await _read_body(request)
    try:
        patch = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid request body", f"malformed JSON: {exc}",
                       [{"field": "body", "reason": f"malformed JSON: {exc}"}])
    if not isinstance(patch, dict):
        return problem(422, "Invalid workflow patch", "the body must be a JSON object",
                       [{"field": "body", "reason": "must be a JSON object"}])
    who = principal(request)
    disabled = request.app[SETTINGS].disabled_kinds

    def change(row: Row) -> WorkflowDefinition:
        if row["state"] == WorkflowState.CANCELLED:
            raise Abort(problem(409, "Workflow cannot be changed", "workflow is cancelled"))
        merged = merge_patch({**row["spec"], "nodes": row["nodes"]}, patch)
        try:
            workflow = WorkflowCreate.model_validate_json(orjson.dumps(merged))
        except ValidationError as exc:
            raise Abort(invalid(exc, "Invalid workflow patch")) from None
        _check_kinds(who, workflow, disabled)
        nodes = node_specs(workflow)
        new_version = nodes != row["nodes"] or workflow.name != row["name"]
        definition = workflow_definition(workflow, datetime.now(UTC), new_nodes=new_version)
        if not any(k in patch for k in TIMING_FIELDS):
            definition = dataclasses.replace(definition, columns=dataclasses.replace(
                definition.columns, next_fire_at=row["next_fire_at"]))
        return definition

    row = await request.app[WORKFLOWS].update_workflow(workflow_id, who.namespace, change)
    if row is None:
        raise web.HTTPNotFound()
    return json_response(workflow_out(row))


async def cancel_workflow(request: web.Request) -> web.Response:
    workflow_id, namespace = uuid_param(request), principal(request).namespace
    workflows = request.app[WORKFLOWS]
    moved = await workflows.cancel_workflow(workflow_id, namespace)
    row = await workflows.get_workflow(workflow_id, namespace)
    if row is None:
        raise web.HTTPNotFound()
    if not moved and row["state"] != WorkflowState.CANCELLED:
        return problem(409, "Workflow already finished", f"workflow is {row['state']}")
    return json_response(workflow_out(row))


async def pause_workflow(request: web.Request) -> web.Response:
    workflow_id, namespace = uuid_param(request), principal(request).namespace
    workflows = request.app[WORKFLOWS]
    moved = await workflows.pause_workflow(workflow_id, namespace)
    row = await workflows.get_workflow(workflow_id, namespace)
    if row is None:
        raise web.HTTPNotFound()
    if not moved and row["state"] != WorkflowState.PAUSED:
        return problem(409, "Workflow cannot be paused", f"workflow is {row['state']}")
    return json_response(workflow_out(row))


async def resume_workflow(request: web.Request) -> web.Response:
    workflow_id, namespace = uuid_param(request), principal(request).namespace
    workflows = request.app[WORKFLOWS]

    def plan(row: Row) -> tuple[datetime | None, list[tuple[datetime, str]]]:
        # plan_resume reads a job's columns; a workflow has no bounds nor jitter.
        return plan_resume({**row, "jitter_s": 0.0, "start_at": None, "end_at": None},
                           datetime.now(UTC))

    outcome = await workflows.resume_workflow(workflow_id, namespace, plan)
    if outcome == "missing":
        raise web.HTTPNotFound()
    row = await workflows.get_workflow(workflow_id, namespace)
    assert row is not None
    if outcome == "not_paused" and row["state"] != WorkflowState.ACTIVE:
        return problem(409, "Workflow cannot be resumed", f"workflow is {row['state']}")
    return json_response(workflow_out(row))


# --- runs --------------------------------------------------------------------------------


async def start_run(request: web.Request) -> web.Response:
    """Start a run now, with the optional ``input`` every python node may ask for."""
    body = await request.read()
    try:
        wanted = RunStart.model_validate_json(body) if body.strip() else RunStart()
    except ValidationError as exc:
        return invalid(exc, "Invalid run")
    row = await _workflow(request)
    if row["state"] == WorkflowState.CANCELLED:
        return problem(409, "Workflow cannot run", "workflow is cancelled")
    disabled = request.app[SETTINGS].disabled_kinds
    for kind in sorted({n["kind"] for n in row["nodes"]} & set(disabled)):
        raise Forbidden(f"job kind '{kind}' is disabled on this deployment", "kind")
    workflows = request.app[WORKFLOWS]
    run_id = await workflows.start_run(row["id"], datetime.now(UTC), wanted.input)
    if run_id is None:
        return problem(409, "Already started", "a run of this workflow started this instant")
    found = await workflows.get_run(run_id, row["namespace"])
    assert found is not None
    response = json_response(run_out(*found), 201)
    response.headers["Location"] = f"/api/v1/workflow-runs/{run_id}"
    return response


async def list_runs(request: web.Request) -> web.Response:
    row = await _workflow(request)
    query: PageQuery = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor)
    rows = await request.app[WORKFLOWS].list_runs(row["id"], after=after,
                                                  limit=query.limit + 1)
    items, cursor = page(rows, query.limit, lambda r: (r["scheduled_for"], r["id"]))
    return json_response(WorkflowRunList(items=[run_out(r) for r in items],
                                         next_cursor=cursor))


async def get_run(request: web.Request) -> web.Response:
    found = await request.app[WORKFLOWS].get_run(uuid_param(request),
                                                 principal(request).namespace)
    if found is None:
        raise web.HTTPNotFound()
    return json_response(run_out(*found))


async def cancel_run(request: web.Request) -> web.Response:
    """Cancel a running run; cancelling a cancelled run again is not an error."""
    run_id, namespace = uuid_param(request), principal(request).namespace
    workflows = request.app[WORKFLOWS]
    before = await workflows.cancel_run(run_id, namespace)
    if before is None:
        raise web.HTTPNotFound()
    if before not in (RunState.RUNNING, RunState.CANCELLED):
        return problem(409, "Run already finished", f"run is {before}")
    found = await workflows.get_run(run_id, namespace)
    assert found is not None
    return json_response(run_out(*found))


async def retry_run(request: web.Request) -> web.Response:
    """Run again the failed, upstream_failed and cancelled nodes of a finished run and
    everything downstream of them; what succeeded is kept."""
    run_id, namespace = uuid_param(request), principal(request).namespace
    workflows = request.app[WORKFLOWS]
    found = await workflows.get_run(run_id, namespace)
    if found is None:
        raise web.HTTPNotFound()
    workflow = await workflows.get_workflow(found[0]["workflow_id"], namespace)
    assert workflow is not None
    if workflow["state"] == WorkflowState.CANCELLED:
        return problem(409, "Run cannot be retried", "its workflow is cancelled")
    before = await workflows.retry_run(run_id, namespace)
    if before is None:
        raise web.HTTPNotFound()
    if before not in (RunState.FAILED, RunState.CANCELLED):
        return problem(409, "Nothing to retry",
                       f"run is {before}: only a failed or cancelled run is retried")
    found = await workflows.get_run(run_id, namespace)
    assert found is not None
    return json_response(run_out(*found))


_REPLAY_HEADERS = {"Location": "The workflow's URL",
                   "Idempotent-Replayed": "'true': an earlier create with this "
                                          "Idempotency-Key and body made this workflow"}

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/workflows", create_workflow, "Create a workflow", "write",
              ok={201: WorkflowOut, 200: WorkflowOut}, errors=(403, 409, 413),
              body=WorkflowCreate,
              request_headers={"Idempotency-Key": {
                  "description": "Makes a retried create safe, as for jobs.",
                  "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}},
              response_headers={201: {"Location": "The new workflow's URL"},
                                200: _REPLAY_HEADERS},
              links_to=("get_workflow", "patch_workflow", "cancel_workflow", "pause_workflow",
                        "resume_workflow", "start_run", "list_runs")),
    Operation("GET", "/api/v1/workflows", list_workflows,
              "List workflows, newest first (without their nodes)", "read",
              ok={200: WorkflowList}, errors=(400, 422), query=ListWorkflowsQuery),
    Operation("GET", "/api/v1/workflows/{id}", get_workflow,
              "One workflow with its nodes and last run", "read", ok={200: WorkflowOut},
              errors=(404,)),
    Operation("PATCH", "/api/v1/workflows/{id}", patch_workflow,
              "Change a workflow (JSON merge patch); new runs use the change", "write",
              ok={200: WorkflowOut}, errors=(403, 404, 409, 413), patch_of=WorkflowCreate),
    Operation("DELETE", "/api/v1/workflows/{id}", cancel_workflow,
              "Cancel a workflow: no new runs, running runs cancelled", "write",
              ok={200: WorkflowOut}, errors=(404, 409)),
    Operation("POST", "/api/v1/workflows/{id}/pause", pause_workflow,
              "Pause a workflow's schedule", "write", ok={200: WorkflowOut},
              errors=(404, 409)),
    Operation("POST", "/api/v1/workflows/{id}/resume", resume_workflow,
              "Resume a paused workflow", "write", ok={200: WorkflowOut}, errors=(404, 409)),
    Operation("POST", "/api/v1/workflows/{id}/runs", start_run,
              "Start a run now (body {\"input\": {...}} optional)", "write",
              ok={201: WorkflowRunOut}, errors=(403, 404, 409), body=RunStart,
              response_headers={201: {"Location": "The run's URL"}},
              links_to=("get_run", "cancel_run", "retry_run")),
    Operation("GET", "/api/v1/workflows/{id}/runs", list_runs,
              "A workflow's runs, newest first", "read", ok={200: WorkflowRunList},
              errors=(400, 404, 422), query=PageQuery),
    Operation("GET", "/api/v1/workflow-runs/{id}", get_run,
              "One run with every node's state", "read", ok={200: WorkflowRunOut},
              errors=(404,)),
    Operation("POST", "/api/v1/workflow-runs/{id}/cancel", cancel_run,
              "Cancel a run: queued nodes cancelled, running ones stopped", "write",
              ok={200: WorkflowRunOut}, errors=(404, 409)),
    Operation("POST", "/api/v1/workflow-runs/{id}/retry", retry_run,
              "Run again what failed (and what depends on it); keep what succeeded",
              "write", ok={200: WorkflowRunOut}, errors=(404, 409)),
)
