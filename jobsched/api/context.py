"""What the api's handlers find on the application (typed aiohttp AppKeys), set once by
``build_app``; and the small helpers every route module shares."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from jobsched.api.cluster import ClusterView
from jobsched.crypto import SecretBox
from jobsched.domain.egress import EgressPolicy
from jobsched.health import Readiness
from jobsched.ports import (
    JobRepository,
    ReadRouting,
    SecretRepository,
    WebhookRepository,
    WorkflowRepository,
)
from jobsched.settings import Settings

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JOBS = web.AppKey("jobs", JobRepository)
WORKFLOWS = web.AppKey("workflows", WorkflowRepository)
REPLICA = web.AppKey("replica", ReadRouting)
SETTINGS = web.AppKey("settings", Settings)
READINESS = web.AppKey("readiness", Readiness)
CLUSTER = web.AppKey("cluster", ClusterView)
OPENAPI = web.AppKey("openapi", bytes)
SECRETS = web.AppKey("secrets", SecretRepository)
#: Seals secret values (absent: no JOBSCHED_SECRETS_KEY, the store refuses writes).
SECRET_BOX = web.AppKey("secret_box", SecretBox)
WEBHOOKS = web.AppKey("webhooks", WebhookRepository)
#: Where outbound HTTP (webhooks) may connect: literal addresses are checked at creation.
EGRESS = web.AppKey("egress", EgressPolicy)
#: The exceptions that mean "a dependency is unreachable now": answered 503, not 500.
UNAVAILABLE = web.AppKey("unavailable", tuple)


class Abort(Exception):
    """Ends a handler with this response (e.g. raised from a callback run in a
    transaction, which then rolls back)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


class QueryInvalid(Exception):
    def __init__(self, exc: ValidationError) -> None:
        self.exc = exc


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, body=model.model_dump_json(),
                        content_type="application/json")


def _uuid_text(value: Any) -> str:
    """orjson's fallback: the database driver's own UUID type (a uuid.UUID subclass,
    which orjson does not take) as its text; anything else is refused as usual."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def document_response(document: Any, status: int = 200) -> web.Response:
    """``document`` (JSON values, UUIDs and aware datetimes) as JSON, written as pydantic
    writes a model of it (a UTC time ends in ``Z``) without building one: for the hot
    routes whose answer is already known to be valid."""
    body = orjson.dumps(document, default=_uuid_text, option=orjson.OPT_UTC_Z)
    return web.Response(status=status, body=body, content_type="application/json")


def uuid_param(request: web.Request, name: str = "id") -> uuid.UUID:
    """A path parameter that must be a UUID: anything else names no resource (404)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None


def parse_query(request: web.Request, model: type[Any]) -> Any:
    """The query string validated by ``model`` (a repeated ``label`` is a list)."""
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        params[key] = values if key == "label" else values[-1]
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise QueryInvalid(exc) from None


async def read(request: web.Request, query: Callable[[JobRepository], Awaitable[T]], *,
               confirm_missing: bool = False) -> T:
    """A read-only query, on the read replica when one is configured. ``confirm_missing``:
    an empty answer is checked on the primary (a job just created may not have reached
    the replica yet). Reads that follow a write in the same request use the primary."""
    replica = request.app.get(REPLICA)
    if replica is None:
        return await query(request.app[JOBS])
    return await replica.read(query, confirm_missing=confirm_missing)
