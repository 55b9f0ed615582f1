"""The api role: validates and stores jobs, serves their state. It never talks to workers."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import ValidationError

from jobsched.adapters.postgres import JobStore
from jobsched.api.dashboard import register_dashboard
from jobsched.api.problems import invalid, problem
from jobsched.domain.models import (
    AttemptOut,
    ExecutionList,
    ExecutionOut,
    JobCreate,
    JobList,
    JobOut,
    ListJobsQuery,
    PageQuery,
)
from jobsched.domain.schedule import first_fire_at, parse_schedule
from jobsched.health import Readiness
from jobsched.settings import Settings

log = logging.getLogger(__name__)

STORE = web.AppKey("store", JobStore)
SETTINGS = web.AppKey("settings", Settings)
READINESS = web.AppKey("readiness", Readiness)
DEFAULT_NAMESPACE = "default"

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


def job_out(row: asyncpg.Record) -> JobOut:
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


async def create_job(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        job = JobCreate.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid job")
    schedule = parse_schedule(job.schedule, job.timezone)
    now = datetime.now(UTC)
    spec = job.model_dump(mode="json", exclude_none=True)
    row = await request.app[STORE].insert_job(
        (
            DEFAULT_NAMESPACE,
            job.name,
            job.kind,
            job.payload(),
            job.schedule,
            job.timezone,
            first_fire_at(schedule, now),
            job.retry.max_attempts,
            job.retry.backoff_s,
            job.retry.max_backoff_s,
            job.timeout_s,
            job.labels,
            spec,
        )
    )
    out = job_out({**dict(row), "last_execution": None})  # type: ignore[arg-type]
    response = _json(out, 201)
    response.headers["Location"] = f"/api/v1/jobs/{row['id']}"
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


async def list_jobs(request: web.Request) -> web.Response:
    query: ListJobsQuery = _query(request, ListJobsQuery)
    labels = dict(item.split("=", 1) for item in query.label) or None
    after = _decode_cursor(query.cursor) if query.cursor else None
    rows = await request.app[STORE].list_jobs(
        DEFAULT_NAMESPACE,
        state=query.state,
        name=query.name,
        labels=labels,
        after=after,
        limit=query.limit + 1,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return _json(JobList(items=[job_out(r) for r in rows], next_cursor=cursor))


async def get_job(request: web.Request) -> web.Response:
    row = await request.app[STORE].get_job(_uuid_param(request, "id"), DEFAULT_NAMESPACE)
    if row is None:
        raise web.HTTPNotFound()
    return _json(job_out(row))


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _uuid_param(request, "id")
    store = request.app[STORE]
    if not await store.cancel_job(job_id, DEFAULT_NAMESPACE):
        row = await store.get_job(job_id, DEFAULT_NAMESPACE)
        if row is None:
            raise web.HTTPNotFound()
        if row["state"] != "cancelled":
            return problem(409, "Job already finished", f"job is {row['state']}")
    row = await store.get_job(job_id, DEFAULT_NAMESPACE)
    assert row is not None
    return _json(job_out(row))


async def list_job_executions(request: web.Request) -> web.Response:
    job_id = _uuid_param(request, "id")
    query: PageQuery = _query(request, PageQuery)
    store = request.app[STORE]
    if not await store.job_exists(job_id, DEFAULT_NAMESPACE):
        raise web.HTTPNotFound()
    after = _decode_cursor(query.cursor) if query.cursor else None
    rows = await store.list_executions(job_id, after=after, limit=query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = _encode_cursor(rows[-1]["scheduled_for"], rows[-1]["id"]) if more else None
    return _json(ExecutionList(items=[execution_out(r) for r in rows], next_cursor=cursor))


async def get_execution(request: web.Request) -> web.Response:
    found = await request.app[STORE].get_execution(
        _uuid_param(request, "id"), DEFAULT_NAMESPACE
    )
    if found is None:
        raise web.HTTPNotFound()
    row, attempts = found
    return _json(execution_out(row, attempts))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS].check()
    return web.Response(
        status=200 if report["ready"] else 503,
        body=orjson.dumps(report),
        content_type="application/json",
    )


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
    except (OSError, asyncpg.PostgresConnectionStatusError, asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError, TimeoutError) as exc:
        log.warning("dependency unavailable during %s %s: %r", request.method, request.path, exc)
        return problem(503, "Service unavailable", "a dependency is not reachable; retry",
                       headers={"Retry-After": "1"})
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal server error")


def build_app(settings: Settings, store: JobStore, readiness: Readiness) -> web.Application:
    app = web.Application(
        middlewares=[problem_middleware], client_max_size=settings.max_body_bytes
    )
    app[STORE] = store
    app[SETTINGS] = settings
    app[READINESS] = readiness
    app.router.add_post("/api/v1/jobs", create_job)
    app.router.add_get("/api/v1/jobs", list_jobs)
    app.router.add_get("/api/v1/jobs/{id}", get_job)
    app.router.add_delete("/api/v1/jobs/{id}", cancel_job)
    app.router.add_get("/api/v1/jobs/{id}/executions", list_job_executions)
    app.router.add_get("/api/v1/executions/{id}", get_execution)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    register_dashboard(app)
    return app
