"""The api role: validates and stores jobs, serves their state. It never talks to workers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from aiohttp import web
from pydantic import ValidationError

from jobsched import __version__
from jobsched.adapters.postgres import (
    CONNECTION_ERRORS,
    IdempotencyConflict,
    JobStore,
    QuotaExceeded,
    ReplicaReads,
    TokenStore,
)
from jobsched.api.cluster import ClusterView
from jobsched.api.dashboard import register_dashboard
from jobsched.api.openapi import Operation, build_openapi
from jobsched.api.problems import invalid, problem
from jobsched.api.security import Authenticator, principal, security_middleware
from jobsched.domain.auth import Forbidden, RateLimiter, check_access, check_kind
from jobsched.domain.firing import initial_fire_at, jitter_offset, preview_fires
from jobsched.domain.models import (
    AttemptOut,
    ExecutionList,
    ExecutionOut,
    JobCreate,
    JobList,
    JobOut,
    ListJobsQuery,
    PageQuery,
    PreviewFire,
    SchedulePreview,
    SchedulePreviewRequest,
)
from jobsched.domain.schedule import next_fire_after, parse_schedule
from jobsched.health import Readiness
from jobsched.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
STORE = web.AppKey("store", JobStore)
REPLICA = web.AppKey("replica", ReplicaReads)
SETTINGS = web.AppKey("settings", Settings)
READINESS = web.AppKey("readiness", Readiness)
CLUSTER = web.AppKey("cluster", ClusterView)
OPENAPI = web.AppKey("openapi", bytes)
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(model: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json(), content_type="application/json"
    )


def _encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = orjson.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(row_id)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise web.HTTPBadRequest(reason="cursor") from None


def _uuid_param(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None


def execution_out(row: Any, attempts: list[Any] | None = None) -> ExecutionOut:
    data = dict(row)
    if attempts is not None:
        data["attempts"] = [AttemptOut.model_validate(dict(a)) for a in attempts]
    return ExecutionOut.model_validate(data)


def job_out(row: Any) -> JobOut:
    last = row["last_execution"]
    return JobOut.model_validate(
        {
            **row["spec"],
            "id": row["id"],
            "namespace": row["namespace"],
            "state": row["state"],
            "next_fire_at": row["next_fire_at"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "last_execution": ExecutionOut.model_validate(last) if last else None,
        }
    )


class _FirstFireMissing(Exception):
    """The job's bounds leave no fire at all (or, without end_at, a year field that is
    already past); ``field`` is the one to blame."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def job_values(job: JobCreate, job_id: uuid.UUID, now: datetime) -> tuple[Any, ...]:
    """The job's columns in JOB_COLUMNS order, its first fire computed from ``now``."""
    schedule = parse_schedule(job.schedule, job.timezone, job_id.bytes)
    offset = jitter_offset(job_id, job.jitter_s) if schedule.is_recurring else timedelta(0)
    next_fire_at = initial_fire_at(schedule, now, start_at=job.start_at, end_at=job.end_at,
                                   offset=offset)
    if next_fire_at is None:
        raise _FirstFireMissing("end_at" if job.end_at is not None else "schedule")
    return (
        job.name, job.kind, job.payload(), job.schedule, job.timezone, next_fire_at,
        job.retry.max_attempts, job.retry.backoff_s, job.retry.max_backoff_s, job.timeout_s,
        job.labels, job.model_dump(mode="json", exclude_none=True), job.misfire,
        job.max_catchup, job.starting_deadline_s, job.concurrency, job.start_at, job.end_at,
        job.max_runs, job.jitter_s, job.history.succeeded, job.history.failed,
    )


_NO_FIRE = {"end_at": "the schedule has no fire before end_at",
            "schedule": "the schedule has no fire time from now (or start_at) on"}


def _no_fire_problem(missing: _FirstFireMissing) -> web.Response:
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
        raise _Abort(problem(400, "Invalid Idempotency-Key", reason,
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
    key = _idempotency_key(request)
    job_id = uuid.uuid4()
    now = datetime.now(UTC)
    try:
        values = job_values(job, job_id, now)
    except _FirstFireMissing as missing:
        return _no_fire_problem(missing)
    # The leader looks at the jobs table at least every scheduler_poll_s (and that far
    # plus its lookahead ahead): only a job due sooner needs to wake it.
    wake_horizon = now + timedelta(
        seconds=settings.scheduler_poll_s + settings.scheduler_lookahead_s)
    try:
        row, replayed = await request.app[STORE].create_job(
            (job_id, who.namespace, *values),
            idempotency_key=key,
            digest=body_digest(job) if key else None,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            quota=settings.max_active_jobs,
            notify=values[5] <= wake_horizon,
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
    response = _json(job_out(row), 200 if replayed else 201)
    response.headers["Location"] = f"/api/v1/jobs/{row['id']}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _query(request: web.Request, model: type[Any]) -> Any:
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        params[key] = values if key == "label" else values[-1]
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise _QueryInvalid(exc) from None


class _QueryInvalid(Exception):
    def __init__(self, exc: ValidationError) -> None:
        self.exc = exc


async def _read(request: web.Request, query: Callable[[JobStore], Awaitable[T]], *,
                confirm_missing: bool = False) -> T:
    """A read-only query, on the read replica when one is configured. ``confirm_missing``:
    an empty answer is checked on the primary (a job just created may not have reached
    the replica yet). Reads that follow a write in the same request use the primary."""
    replica = request.app.get(REPLICA)
    if replica is None:
        return await query(request.app[STORE])
    return await replica.read(query, confirm_missing=confirm_missing)


async def list_jobs(request: web.Request) -> web.Response:
    query: ListJobsQuery = _query(request, ListJobsQuery)
    labels = dict(item.split("=", 1) for item in query.label) or None
    after = _decode_cursor(query.cursor) if query.cursor else None
    rows = await _read(request, lambda store: store.list_jobs(
        principal(request).namespace,
        state=query.state,
        name=query.name,
        labels=labels,
        after=after,
        limit=query.limit + 1,
    ))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return _json(JobList(items=[job_out(r) for r in rows], next_cursor=cursor))


async def get_job(request: web.Request) -> web.Response:
    job_id, namespace = _uuid_param(request, "id"), principal(request).namespace
    row = await _read(request, lambda store: store.get_job(job_id, namespace),
                      confirm_missing=True)
    if row is None:
        raise web.HTTPNotFound()
    return _json(job_out(row))


async def _move_job(request: web.Request,
                    move: Callable[[uuid.UUID, str], Awaitable[bool]],
                    target: str, conflict: str) -> web.Response:
    """Apply a state transition; repeating it is not an error (the job is already there),
    a job in another state is a 409 with ``conflict`` as the title."""
    job_id = _uuid_param(request, "id")
    namespace = principal(request).namespace
    store = request.app[STORE]
    moved = await move(job_id, namespace)
    row = await store.get_job(job_id, namespace)
    if row is None:
        raise web.HTTPNotFound()
    if not moved and row["state"] != target:
        return problem(409, conflict, f"job is {row['state']}")
    return _json(job_out(row))


async def cancel_job(request: web.Request) -> web.Response:
    return await _move_job(request, request.app[STORE].cancel_job, "cancelled",
                           "Job already finished")


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


class _Abort(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def patch_job(request: web.Request) -> web.Response:
    """Change a job by JSON merge patch; the whole result is validated as a new job, and
    a changed schedule recomputes next_fire_at in the same transaction."""
    job_id = _uuid_param(request, "id")
    body = await request.read()
    try:
        patch = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid request body", f"malformed JSON: {exc}",
                       [{"field": "body", "reason": f"malformed JSON: {exc}"}])
    if not isinstance(patch, dict):
        return problem(422, "Invalid job patch", "the body must be a JSON object",
                       [{"field": "body", "reason": "must be a JSON object"}])
    if "kind" in patch and patch["kind"] is not None:
        # A new kind replaces the payload: drop the old kind's object unless re-given.
        patch = {**{k: None for k in ("shell", "http", "python") if k not in patch}, **patch}

    who = principal(request)
    disabled = request.app[SETTINGS].disabled_kinds

    def change(row: asyncpg.Record) -> tuple[Any, ...]:
        check_kind(who, row["kind"], disabled)
        if row["state"] not in ("active", "paused"):
            raise _Abort(problem(409, "Job cannot be changed", f"job is {row['state']}"))
        merged = merge_patch(row["spec"], patch)
        try:
            job = JobCreate.model_validate_json(orjson.dumps(merged))
        except ValidationError as exc:
            raise _Abort(invalid(exc, "Invalid job patch")) from None
        check_kind(who, job.kind, disabled)
        values = list(job_values(job, row["id"], datetime.now(UTC)))
        timing = ("schedule", "timezone", "start_at", "end_at", "jitter_s")
        if not any(k in patch for k in timing):
            values[5] = row["next_fire_at"]  # unchanged timing keeps its pending fire
        return tuple(values)

    try:
        row = await request.app[STORE].update_job(job_id, who.namespace, change)
    except _FirstFireMissing as missing:
        return _no_fire_problem(missing)
    if row is None:
        raise web.HTTPNotFound()
    fetched = await request.app[STORE].get_job(job_id, who.namespace)
    assert fetched is not None
    return _json(job_out(fetched))


async def pause_job(request: web.Request) -> web.Response:
    return await _move_job(request, request.app[STORE].pause_job, "paused",
                           "Job cannot be paused")


def plan_resume(row: Any, now: datetime) -> tuple[datetime | None, list[tuple[datetime, str]]]:
    """Next fire of a resumed job, and the skipped fire to record (misfire=skip). With
    run_once or run_all the missed fires stay due and the leader applies the policy."""
    pending = row["next_fire_at"]
    if pending is None or pending > now or row["misfire"] != "skip":
        return pending, []
    schedule = parse_schedule(row["schedule"], row["timezone"], row["id"].bytes)
    if not schedule.is_recurring:
        return None, [(pending, "skipped while paused (misfire=skip)")]
    offset = jitter_offset(row["id"], row["jitter_s"])
    missed, nominal = 0, pending - offset
    while nominal is not None and nominal + offset <= now and missed <= 1000:
        missed += 1
        nominal = next_fire_after(schedule, nominal)
    count = "more than 1000" if missed > 1000 else str(missed)
    following = initial_fire_at(schedule, now, start_at=row["start_at"], end_at=row["end_at"],
                                offset=offset)
    return following, [(pending, f"{count} fires skipped while paused (misfire=skip)")]


async def resume_job(request: web.Request) -> web.Response:
    job_id = _uuid_param(request, "id")
    store = request.app[STORE]
    namespace = principal(request).namespace
    disabled = request.app[SETTINGS].disabled_kinds

    def plan(row: Any) -> tuple[datetime | None, list[tuple[datetime, str]]]:
        if row["kind"] in disabled:
            raise Forbidden(f"job kind '{row['kind']}' is disabled on this deployment", "kind")
        return plan_resume(row, datetime.now(UTC))

    outcome = await store.resume_job(job_id, namespace, plan)
    if outcome == "missing":
        raise web.HTTPNotFound()
    row = await store.get_job(job_id, namespace)
    assert row is not None
    if outcome == "not_paused" and row["state"] != "active":
        return problem(409, "Job cannot be resumed", f"job is {row['state']}")
    return _json(job_out(row))


async def trigger_job(request: web.Request) -> web.Response:
    job_id = _uuid_param(request, "id")
    store = request.app[STORE]
    row = await store.get_job(job_id, principal(request).namespace)
    if row is None:
        raise web.HTTPNotFound()
    if row["kind"] in request.app[SETTINGS].disabled_kinds:
        raise Forbidden(f"job kind '{row['kind']}' is disabled on this deployment", "kind")
    if row["state"] == "cancelled":
        return problem(409, "Job cannot be triggered", "job is cancelled")
    execution = await store.trigger_job(job_id, datetime.now(UTC))
    if execution is None:
        return problem(409, "Already triggered", "a run of this job was triggered this instant")
    return _json(execution_out(execution), 201)


async def list_dead(request: web.Request) -> web.Response:
    """Dead executions (their retries ran out), newest first: the dead-letter view."""
    query: PageQuery = _query(request, PageQuery)
    after = _decode_cursor(query.cursor) if query.cursor else None
    namespace = principal(request).namespace
    rows = await _read(request, lambda store: store.list_dead(namespace, after=after,
                                                              limit=query.limit + 1))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = _encode_cursor(rows[-1]["finished_at"], rows[-1]["id"]) if more else None
    return _json(ExecutionList(items=[execution_out(r) for r in rows], next_cursor=cursor))


async def retry_execution(request: web.Request) -> web.Response:
    """Re-drive a dead execution: one more attempt, now."""
    execution_id = _uuid_param(request, "id")
    store = request.app[STORE]
    namespace = principal(request).namespace
    row = await store.redrive(execution_id, namespace)
    if row is None:
        found = await store.get_execution(execution_id, namespace)
        if found is None:
            raise web.HTTPNotFound()
        return problem(409, "Execution is not dead", f"execution is {found[0]['state']}")
    return _json(execution_out(row))


async def preview_schedule(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        wanted = SchedulePreviewRequest.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid schedule preview")
    schedule = parse_schedule(wanted.schedule, wanted.timezone, wanted.seed_bytes())
    zone = ZoneInfo(wanted.timezone)
    fires = preview_fires(schedule, wanted.start or datetime.now(UTC), wanted.count)
    return _json(SchedulePreview(
        schedule=wanted.schedule, timezone=wanted.timezone,
        items=[PreviewFire(utc=f, local=f.astimezone(zone)) for f in fires],
    ))


async def list_job_executions(request: web.Request) -> web.Response:
    job_id = _uuid_param(request, "id")
    query: PageQuery = _query(request, PageQuery)
    namespace = principal(request).namespace
    if not await _read(request, lambda store: store.job_exists(job_id, namespace),
                       confirm_missing=True):
        raise web.HTTPNotFound()
    after = _decode_cursor(query.cursor) if query.cursor else None
    rows = await _read(request, lambda store: store.list_executions(
        job_id, after=after, limit=query.limit + 1))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = _encode_cursor(rows[-1]["scheduled_for"], rows[-1]["id"]) if more else None
    return _json(ExecutionList(items=[execution_out(r) for r in rows], next_cursor=cursor))


async def get_execution(request: web.Request) -> web.Response:
    execution_id, namespace = _uuid_param(request, "id"), principal(request).namespace
    found = await _read(request, lambda store: store.get_execution(execution_id, namespace),
                        confirm_missing=True)
    if found is None:
        raise web.HTTPNotFound()
    row, attempts = found
    return _json(execution_out(row, attempts))


async def cluster_status(request: web.Request) -> web.Response:
    view = request.app.get(CLUSTER)
    if view is None:
        return problem(503, "Cluster view unavailable", "this api has no cluster view")
    return web.Response(body=orjson.dumps(await view.describe()),
                        content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS].check()
    return web.Response(
        status=200 if report["ready"] else 503,
        body=orjson.dumps(report),
        content_type="application/json",
    )


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


_STATUS_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json; bad input is a 4xx, never a 5xx."""
    try:
        return await handler(request)
    except _Abort as abort:
        return abort.response
    except Forbidden as exc:
        errors = [{"field": exc.field, "reason": exc.reason}] if exc.field else None
        return problem(403, "Forbidden", exc.reason, errors)
    except _QueryInvalid as exc:
        return invalid(exc.exc, "Invalid query parameters")
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SETTINGS].max_body_bytes
        return problem(413, "Request body too large", f"the limit is {limit} bytes: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = _STATUS_TITLES.get(exc.status, exc.reason)
        if exc.status == 400 and exc.reason == "cursor":
            return problem(400, "Invalid cursor", "cursor is not one this API returned",
                           [{"field": "cursor", "reason": "not a cursor this API returned"}])
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(exc.status, title, headers=headers)
    # PostgreSQL unreachable, restarting (admin shutdown, cannot connect now) or its
    # connection lost mid-request: 503, never 500.
    except CONNECTION_ERRORS as exc:
        log.warning("dependency unavailable during %s %s: %r", request.method, request.path, exc)
        return problem(503, "Service unavailable", "a dependency is not reachable; retry",
                       headers={"Retry-After": "1"})
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal server error")


_JOB_ID_ERRORS = (404,)
_REPLAY_HEADERS = {"Location": "The job's URL",
                   "Idempotent-Replayed": "'true': an earlier create with this "
                                          "Idempotency-Key and body made this job"}

# The API: the router and the OpenAPI document are both built from this table.
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
              "read", ok={200: JobOut}, errors=_JOB_ID_ERRORS),
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
              "write", ok={201: ExecutionOut}, errors=(403, 404, 409),
              links_to=("get_execution",)),
    Operation("GET", "/api/v1/jobs/{id}/executions", list_job_executions,
              "A job's executions, newest first", "read", ok={200: ExecutionList},
              errors=(400, 404, 422), query=PageQuery),
    Operation("GET", "/api/v1/executions/{id}", get_execution,
              "One execution with its attempts", "read", ok={200: ExecutionOut},
              errors=_JOB_ID_ERRORS),
    Operation("GET", "/api/v1/dead", list_dead,
              "Dead executions (retries exhausted), newest first", "read",
              ok={200: ExecutionList}, errors=(400, 422), query=PageQuery),
    Operation("POST", "/api/v1/executions/{id}/retry", retry_execution,
              "Retry a dead execution once more", "write", ok={200: ExecutionOut},
              errors=(404, 409), links_to=("get_execution",)),
    Operation("POST", "/api/v1/schedules/preview", preview_schedule,
              "The next fire times of a schedule (changes nothing)", "read",
              ok={200: SchedulePreview}, body=SchedulePreviewRequest),
    Operation("GET", "/api/v1/cluster", cluster_status,
              "Leader, schedulers, live workers and queue depths", "read"),
    Operation("GET", "/api/v1/openapi.json", openapi_document, "This document", "read"),
    Operation("GET", "/healthz", healthz, "Liveness", None),
    Operation("GET", "/readyz", readyz, "Readiness of each dependency (503 if not ready)",
              None, ok={200: None, 503: None}),
)


def _guarded(op: Operation) -> Handler:
    """The route's handler behind the role check its table entry asks for."""
    if op.access is None:
        return op.handler
    access = op.access

    async def guarded(request: web.Request) -> web.StreamResponse:
        check_access(principal(request), access)
        return await op.handler(request)

    return guarded


def openapi(operations: tuple[Operation, ...] = OPERATIONS) -> dict[str, Any]:
    return build_openapi(
        operations, title="jobsched", version=__version__,
        description="Jobs run once or on a schedule by jobsched workers. Every /api/ "
                    "route needs 'Authorization: Bearer <token>'; errors are "
                    "application/problem+json (RFC 9457).")


def build_app(settings: Settings, store: JobStore, readiness: Readiness,
              cluster: ClusterView | None = None,
              replica: ReplicaReads | None = None) -> web.Application:
    authenticator = Authenticator(TokenStore(store.pool), settings.token_cache_s)
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app = web.Application(
        middlewares=[problem_middleware,
                     security_middleware(settings, authenticator, limiter)],
        client_max_size=settings.max_body_bytes,
    )
    app[STORE] = store
    app[SETTINGS] = settings
    app[READINESS] = readiness
    app[OPENAPI] = orjson.dumps(openapi())
    if cluster is not None:
        app[CLUSTER] = cluster
    if replica is not None:
        app[REPLICA] = replica
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, _guarded(op))
    register_dashboard(app)
    return app
