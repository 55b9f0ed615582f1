"""Executions: a job's history, one execution with its attempts, the dead letters, and the
re-drive of a dead execution."""

from __future__ import annotations

from aiohttp import web

from jobsched.api.context import JOBS, SETTINGS, json_response, parse_query, read, uuid_param
from jobsched.api.models import AttemptOut, DeadQuery, ExecutionList, ExecutionOut, PageQuery
from jobsched.api.openapi import Operation
from jobsched.api.pagination import decode_cursor, page
from jobsched.api.problems import problem
from jobsched.api.security import principal
from jobsched.domain.states import ExecutionState, JobState
from jobsched.ports import Row


def execution_out(row: Row, attempts: list[Row] | None = None) -> ExecutionOut:
    data = dict(row)
    if attempts is not None:
        data["attempts"] = [AttemptOut.model_validate(dict(a)) for a in attempts]
    return ExecutionOut.model_validate(data)


async def list_job_executions(request: web.Request) -> web.Response:
    job_id = uuid_param(request)
    query: PageQuery = parse_query(request, PageQuery)
    namespace = principal(request).namespace
    if not await read(request, lambda jobs: jobs.job_exists(job_id, namespace),
                      confirm_missing=True):
        raise web.HTTPNotFound()
    after = decode_cursor(query.cursor)
    rows = await read(request, lambda jobs: jobs.list_executions(
        job_id, after=after, limit=query.limit + 1))
    items, cursor = page(rows, query.limit, lambda r: (r["scheduled_for"], r["id"]))
    return json_response(ExecutionList(items=[execution_out(r) for r in items],
                                       next_cursor=cursor))


async def get_execution(request: web.Request) -> web.Response:
    execution_id, namespace = uuid_param(request), principal(request).namespace
    found = await read(request, lambda jobs: jobs.get_execution(execution_id, namespace),
                       confirm_missing=True)
    if found is None:
        raise web.HTTPNotFound()
    row, attempts = found
    return json_response(execution_out(row, attempts))


async def list_dead(request: web.Request) -> web.Response:
    """Dead executions (their retries ran out), newest first: the dead-letter view; of
    one job with ``job_id`` (a job of another namespace has none, like an unknown one)."""
    query: DeadQuery = parse_query(request, DeadQuery)
    after = decode_cursor(query.cursor)
    namespace = principal(request).namespace
    rows = await read(request, lambda jobs: jobs.list_dead(
        namespace, after=after, limit=query.limit + 1, job_id=query.job_id))
    items, cursor = page(rows, query.limit, lambda r: (r["finished_at"], r["id"]))
    return json_response(ExecutionList(items=[execution_out(r) for r in items],
                                       next_cursor=cursor))


async def retry_execution(request: web.Request) -> web.Response:
    """Re-drive a dead execution: one more attempt, now. Not once its job is cancelled
    (nothing of a cancelled job runs again) nor while its kind is disabled here (it could
    not run): both 409, as the job's state or the deployment's, not the caller, is at odds."""
    execution_id = uuid_param(request)
    jobs = request.app[JOBS]
    namespace = principal(request).namespace
    disabled = request.app[SETTINGS].disabled_kinds
    row = await jobs.redrive(execution_id, namespace, refused_kinds=disabled)
    if row is not None:
        return json_response(execution_out(row))
    found = await jobs.get_execution(execution_id, namespace)
    if found is None:
        raise web.HTTPNotFound()
    execution = found[0]
    run = execution.get("workflow_run_id")
    if run is not None:
        return problem(409, "Execution belongs to a workflow run",
                       f"retry its run instead: POST /api/v1/workflow-runs/{run}/retry")
    if execution["state"] != ExecutionState.DEAD:
        return problem(409, "Execution is not dead", f"execution is {execution['state']}")
    job = await jobs.get_job(execution["job_id"], namespace)
    if job is not None and job["state"] == JobState.CANCELLED:
        return problem(409, "Job is cancelled",
                       "the job of this execution was cancelled: it runs no more")
    if job is not None and job["kind"] in disabled:
        reason = f"job kind '{job['kind']}' is disabled on this deployment"
        return problem(409, "Job kind is disabled", reason,
                       [{"field": "kind", "reason": reason}])
    return problem(409, "Execution cannot be retried", "it changed meanwhile; read it again")


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/v1/jobs/{id}/executions", list_job_executions,
              "A job's executions, newest first", "read", ok={200: ExecutionList},
              errors=(400, 404, 422), query=PageQuery),
    Operation("GET", "/api/v1/executions/{id}", get_execution,
              "One execution with its attempts", "read", ok={200: ExecutionOut},
              errors=(404,)),
    Operation("GET", "/api/v1/dead", list_dead,
              "Dead executions (retries exhausted), newest first; of one job with "
              "job_id", "read", ok={200: ExecutionList}, errors=(400, 422), query=DeadQuery),
    Operation("POST", "/api/v1/executions/{id}/retry", retry_execution,
              "Retry a dead execution once more (not of a cancelled job or a disabled "
              "kind)", "write", ok={200: ExecutionOut},
              errors=(404, 409), links_to=("get_execution",)),
)
