"""``/api/v1/jobs``: create, list, read, change, cancel, pause, resume and trigger jobs."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from jobsched.api.context import (
    JOBS,
    SETTINGS,
    Abort,
    document_response,
    json_response,
    parse_query,
    read,
    uuid_param,
)
from jobsched.api.models import (
    MAX_DOCUMENT_DEPTH,
    ExecutionOut,
    JobCreate,
    JobList,
    JobOut,
    ListJobsQuery,
    TriggerRun,
    too_deep,
)
from jobsched.api.openapi import Operation
from jobsched.api.pagination import decode_cursor, page
from jobsched.api.problems import invalid, problem, unknown_patch_member
from jobsched.api.routes.executions import execution_out
from jobsched.api.security import principal
from jobsched.domain.auth import Forbidden, check_kind
from jobsched.domain.firing import initial_fire_at, jitter_offset, plan_resume
from jobsched.domain.priority import Priority
from jobsched.domain.schedule import parse_schedule
from jobsched.domain.states import JobState
from jobsched.ports import IdempotencyConflict, JobColumns, QuotaExceeded, Row
from jobsched.settings import Settings

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
#: The fields of a job that decide when it fires: a PATCH of none of them keeps the
#: pending fire.
TIMING_FIELDS = ("schedule", "timezone", "start_at", "end_at", "jitter_s")


def job_document(row: Row) -> dict[str, Any]:
    """The job as the api shows it (``JobOut``: the submitted spec echoed with the stored
    state), as JSON values for ``document_response``: byte for byte what
    ``JobOut.model_dump_json`` writes, without a model's validation and dump per job."""
    last = row["last_execution"]
    spec = row["spec"]
    fields = {
        "id": row["id"],
        "namespace": row["namespace"],
        "state": row["state"],
        # A paused job keeps its pending fire (for resume's misfire policy) but has no
        # next fire to show until it is resumed.
        "next_fire_at": row["next_fire_at"] if row["state"] == JobState.ACTIVE else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "last_execution": (ExecutionOut.model_validate(last).model_dump(mode="json")
                           if last else None),
    }
    document = {**fields, **spec}  # the spec after the fields, as JobOut writes its extras
    if len(document) != len(fields) + len(spec):  # a spec key named as a field: the
        # field's value wins, as in JobOut
        document.update(fields)
    return document


class FirstFireMissing(Exception):
    """The job's bounds leave no fire at all (or, without end_at, a year field that is
    already past); ``field`` is the one to blame."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def job_columns(job: JobCreate, job_id: uuid.UUID, now: datetime) -> JobColumns:
    """The stored columns of a job as submitted, its first fire computed from ``now``."""
    schedule = parse_schedule(job.schedule, job.timezone, job_id.bytes)
    offset = jitter_offset(job_id, job.jitter_s) if schedule.is_recurring else timedelta(0)
    next_fire_at = initial_fire_at(schedule, now, start_at=job.start_at, end_at=job.end_at,
                                   offset=offset)
    if next_fire_at is None:
        raise FirstFireMissing("end_at" if job.end_at is not None else "schedule")
    return JobColumns(
        name=job.name, kind=job.kind, payload=job.payload(), schedule=job.schedule,
        timezone=job.timezone, next_fire_at=next_fire_at,
        max_attempts=job.retry.max_attempts, backoff_s=job.retry.backoff_s,
        max_backoff_s=job.retry.max_backoff_s, timeout_s=job.timeout_s, labels=job.labels,
        spec=job.model_dump(mode="json", exclude_none=True), misfire=job.misfire,
        max_catchup=job.max_catchup, starting_deadline_s=job.starting_deadline_s,
        concurrency=job.concurrency, start_at=job.start_at, end_at=job.end_at,
        max_runs=job.max_runs, jitter_s=job.jitter_s, keep_succeeded=job.history.succeeded,
        keep_failed=job.history.failed, priority=Priority.from_name(job.priority).rank,
    )


def _egress_problem(job: JobCreate, settings: Settings, title: str) -> web.Response | None:
    """An http job whose URL is a literal address the workers would refuse (DESIGN.md
    "Egress"): a 422 now rather than a failed run later. A host name is checked on the
    worker, on the address it resolves to."""
    if job.http is None:
        return None
    reason = settings.egress_policy().literal_refusal(job.http.url)
    if reason is None:
        return None
    return problem(422, title, f"http.url: {reason}", [{"field": "http.url", "reason": reason}])


_NO_FIRE = {"end_at": "the schedule has no fire before end_at",
            "schedule": "the schedule has no fire time from now (or start_at) on"}


def _no_fire_problem(missing: FirstFireMissing) -> web.Response:
    reason = _NO_FIRE[missing.field]
    return problem(422, "Invalid job", f"{missing.field}: {reason}",
                   [{"field": missing.field, "reason": reason}])


def _idempotency_key(request: web.Request) -> str | None:
    given = request.headers.getall("Idempotency-Key", [])
    if not given:
        return None
    if len(given) > 1 or not IDEMPOTENCY_KEY_RE.fullmatch(given[0]):
        reason = ("must be given once" if len(given) > 1
                  else "must be 1-255 printable ASCII characters without spaces")
        raise Abort(problem(400, "Invalid Idempotency-Key", reason,
                            [{"field": "Idempotency-Key", "reason": reason}]))
    return given[0]


def body_digest(job: JobCreate) -> bytes:
    """What makes two creates "the same request": the job after validation and defaults,
    so key order, spacing and spelled-out defaults do not matter."""
    return hashlib.sha256(orjson.dumps(job.model_dump(mode="json"),
                                       option=orjson.OPT_SORT_KEYS)).digest()


async def create_job(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        job = JobCreate.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid job")
    who = principal(request)
    settings = request.app[SETTINGS]
    check_kind(who, job.kind, settings.disabled_kinds)
    refused = _egress_problem(job, settings, "Invalid job")
    if refused is not None:
        return refused
    key = _idempotency_key(request)
    job_id = uuid.uuid4()
    now = datetime.now(UTC)
    try:
        columns = job_columns(job, job_id, now)
    except FirstFireMissing as missing:
        return _no_fire_problem(missing)
    # The leader looks at the jobs table at least every scheduler_poll_s (and that far
    # plus its lookahead ahead): only a job due sooner needs to wake it.
    wake_horizon = now + timedelta(
        seconds=settings.scheduler_poll_s + settings.scheduler_lookahead_s)
    try:
        row, replayed = await request.app[JOBS].create_job(
            job_id, who.namespace, columns,
            idempotency_key=key,
            digest=body_digest(job) if key else None,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            quota=settings.max_active_jobs,
            notify=columns.next_fire_at <= wake_horizon,
        )
    except IdempotencyConflict as exc:
        return problem(409, "Idempotency-Key reused",
                       f"this key already created job {exc.job_id} from a different body",
                       [{"field": "Idempotency-Key",
                         "reason": "already used with a different body"}])
    except QuotaExceeded as exc:
        reason = (f"namespace '{exc.namespace}' already has {exc.quota} active or paused "
                  "jobs (max_active_jobs); cancel some or ask for a larger quota")
        return problem(403, "Quota exceeded", reason)
    response = document_response(job_document(row), 200 if replayed else 201)
    response.headers["Location"] = f"/api/v1/jobs/{row['id']}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def list_jobs(request: web.Request) -> web.Response:
    query: ListJobsQuery = parse_query(request, ListJobsQuery)
    labels = dict(item.split("=", 1) for item in query.label) or None
    after = decode_cursor(query.cursor)
    namespace = principal(request).namespace
    rows = await read(request, lambda jobs: jobs.list_jobs(
        namespace, state=query.state, name=query.name, labels=labels, after=after,
        limit=query.limit + 1))
    items, cursor = page(rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return document_response({"items": [job_document(r) for r in items],
                              "next_cursor": cursor})


async def get_job(request: web.Request) -> web.Response:
    job_id, namespace = uuid_param(request), principal(request).namespace
    row = await read(request, lambda jobs: jobs.get_job(job_id, namespace),
                     confirm_missing=True)
    if row is None:
        raise web.HTTPNotFound()
    return document_response(job_document(row))


async def _move_job(request: web.Request, target: JobState, conflict: str) -> web.Response:
    """Apply a state transition; repeating it is not an error (the job is already there),
    a job in another state is a 409 with ``conflict`` as the title."""
    job_id = uuid_param(request)
    namespace = principal(request).namespace
    jobs = request.app[JOBS]
    move = jobs.cancel_job if target == JobState.CANCELLED else jobs.pause_job
    moved = await move(job_id, namespace)
    row = await jobs.get_job(job_id, namespace)
    if row is None:
        raise web.HTTPNotFound()
    if not moved and row["state"] != target:
        return problem(409, conflict, f"job is {row['state']}")
    return document_response(job_document(row))


async def cancel_job(request: web.Request) -> web.Response:
    return await _move_job(request, JobState.CANCELLED, "Job already finished")


async def pause_job(request: web.Request) -> web.Response:
    return await _move_job(request, JobState.PAUSED, "Job cannot be paused")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def patch_job(request: web.Request) -> web.Response:
    """Change a job by JSON merge patch; the whole result is validated as a new job, and
    a changed schedule recomputes next_fire_at in the same transaction."""
    job_id = uuid_param(request)
    body = await request.read()
    try:
        patch = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid request body", f"malformed JSON: {exc}",
                       [{"field": "body", "reason": f"malformed JSON: {exc}"}])
    if not isinstance(patch, dict):
        return problem(422, "Invalid job patch", "the body must be a JSON object",
                       [{"field": "body", "reason": "must be a JSON object"}])
    deep = too_deep(patch)
    if deep is not None:
        reason = f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"
        return problem(422, "Invalid job patch", f"{deep}: {reason}",
                       [{"field": deep, "reason": reason}])
    unknown = unknown_patch_member(patch, JobCreate)
    if unknown is not None:
        return problem(422, "Invalid job patch", f"{unknown}: unknown field",
                       [{"field": unknown, "reason": "unknown field"}])
    if "kind" in patch and patch["kind"] is not None:
        # A new kind replaces the payload: drop the old kind's object unless re-given.
        patch = {**{k: None for k in ("shell", "http", "python") if k not in patch}, **patch}

    who = principal(request)
    settings = request.app[SETTINGS]
    disabled = settings.disabled_kinds

    def change(row: Row) -> JobColumns:
        check_kind(who, row["kind"], disabled)
        if row["state"] not in (JobState.ACTIVE, JobState.PAUSED):
            raise Abort(problem(409, "Job cannot be changed", f"job is {row['state']}"))
        merged = merge_patch(row["spec"], patch)
        try:
            job = JobCreate.model_validate_json(orjson.dumps(merged))
        except ValidationError as exc:
            raise Abort(invalid(exc, "Invalid job patch")) from None
        check_kind(who, job.kind, disabled)
        refused = _egress_problem(job, settings, "Invalid job patch")
        if refused is not None:
            raise Abort(refused)
        columns = job_columns(job, row["id"], datetime.now(UTC))
        if not any(k in patch for k in TIMING_FIELDS):
            columns = dataclasses.replace(columns, next_fire_at=row["next_fire_at"])
        return columns

    try:
        row = await request.app[JOBS].update_job(job_id, who.namespace, change)
    except FirstFireMissing as missing:
        return _no_fire_problem(missing)
    if row is None:
        raise web.HTTPNotFound()
    fetched = await request.app[JOBS].get_job(job_id, who.namespace)
    assert fetched is not None
    return document_response(job_document(fetched))


async def resume_job(request: web.Request) -> web.Response:
    job_id = uuid_param(request)
    jobs = request.app[JOBS]
    namespace = principal(request).namespace
    disabled = request.app[SETTINGS].disabled_kinds

    def plan(row: Row) -> tuple[datetime | None, list[tuple[datetime, str]]]:
        if row["kind"] in disabled:
            raise Forbidden(f"job kind '{row['kind']}' is disabled on this deployment", "kind")
        return plan_resume(row, datetime.now(UTC))

    outcome = await jobs.resume_job(job_id, namespace, plan)
    if outcome == "missing":
        raise web.HTTPNotFound()
    row = await jobs.get_job(job_id, namespace)
    assert row is not None
    if outcome == "not_paused" and row["state"] != JobState.ACTIVE:
        return problem(409, "Job cannot be resumed", f"job is {row['state']}")
    return document_response(job_document(row))


async def trigger_job(request: web.Request) -> web.Response:
    """Run a job now, once; the optional body's ``args`` are merged over a python job's
    own for this run only."""
    job_id = uuid_param(request)
    body = (await request.read()).strip()
    try:
        # No body, or JSON null (what a trigger without one was often sent): no args.
        wanted = TriggerRun.model_validate_json(body) if body not in (b"", b"null") \
            else TriggerRun()
    except ValidationError as exc:
        return invalid(exc, "Invalid trigger")
    jobs = request.app[JOBS]
    row = await jobs.get_job(job_id, principal(request).namespace)
    if row is None:
        raise web.HTTPNotFound()
    if wanted.args is not None and row["kind"] != "python":
        return problem(422, "Invalid trigger", errors=[
            {"field": "args", "reason": f"only a python job takes args; this one is "
                                        f"{row['kind']}"}])
    if row["kind"] in request.app[SETTINGS].disabled_kinds:
        raise Forbidden(f"job kind '{row['kind']}' is disabled on this deployment", "kind")
    if row["state"] == JobState.CANCELLED:
        return problem(409, "Job cannot be triggered", "job is cancelled")
    execution = await jobs.trigger_job(job_id, datetime.now(UTC), wanted.args)
    if execution is None:
        return problem(409, "Already triggered", "a run of this job was triggered this instant")
    return json_response(execution_out(execution), 201)


_REPLAY_HEADERS = {"Location": "The job's URL",
                   "Idempotent-Replayed": "'true': an earlier create with this "
                                          "Idempotency-Key and body made this job"}

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/jobs", create_job, "Create a job", "write",
              ok={201: JobOut, 200: JobOut}, errors=(403, 409),
              body=JobCreate,
              request_headers={"Idempotency-Key": {
                  "description": "Makes a retried create safe: the same key and body within "
                                 "24 h answer 200 with the first job (header "
                                 "Idempotent-Replayed: true); the same key with another "
                                 "body is a 409.",
                  "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}},
              response_headers={201: {"Location": "The new job's URL"},
                                200: _REPLAY_HEADERS},
              links_to=("get_job", "patch_job", "cancel_job", "pause_job", "resume_job",
                        "trigger_job", "list_job_executions")),
    Operation("GET", "/api/v1/jobs", list_jobs, "List jobs, newest first", "read",
              ok={200: JobList}, errors=(400, 422), query=ListJobsQuery),
    Operation("GET", "/api/v1/jobs/{id}", get_job, "One job with its last execution",
              "read", ok={200: JobOut}, errors=(404,)),
    Operation("PATCH", "/api/v1/jobs/{id}", patch_job,
              "Change a job (JSON merge patch of the job as created)", "write",
              ok={200: JobOut}, errors=(403, 404, 409), patch_of=JobCreate),
    Operation("DELETE", "/api/v1/jobs/{id}", cancel_job,
              "Cancel a job: no further fires, active runs cancelled", "write",
              ok={200: JobOut}, errors=(404, 409)),
    Operation("POST", "/api/v1/jobs/{id}/pause", pause_job, "Pause a job", "write",
              ok={200: JobOut}, errors=(404, 409)),
    Operation("POST", "/api/v1/jobs/{id}/resume", resume_job, "Resume a paused job", "write",
              ok={200: JobOut}, errors=(403, 404, 409)),
    Operation("POST", "/api/v1/jobs/{id}/trigger", trigger_job, "Run a job now, once",
              "write", ok={201: ExecutionOut}, errors=(403, 404, 409, 422), body=TriggerRun,
              body_optional=True,
              links_to=("get_execution",)),
)
