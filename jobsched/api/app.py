"""The api role's application: the routes of ``jobsched.api.routes`` behind the security
gate and the problem+json translation. It validates and stores; it never talks to workers.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from jobsched import __version__
from jobsched.api.cluster import ClusterView
from jobsched.api.context import (
    CLUSTER,
    EGRESS,
    JOBS,
    OPENAPI,
    READINESS,
    REPLICA,
    SECRET_BOX,
    SECRETS,
    SETTINGS,
    UNAVAILABLE,
    WEBHOOKS,
    Abort,
    Handler,
    QueryInvalid,
)
from jobsched.api.dashboard import register_dashboard
from jobsched.api.openapi import Operation, build_openapi
from jobsched.api.problems import invalid, problem
from jobsched.api.routes import OPERATIONS
from jobsched.api.routes.schedules import install_previews
from jobsched.api.security import (
    Authenticator,
    principal,
    security_headers,
    security_middleware,
)
from jobsched.crypto import SecretBox
from jobsched.domain.auth import Forbidden, RateLimiter, check_access
from jobsched.health import Readiness
from jobsched.ports import (
    JobRepository,
    ReadRouting,
    SecretRepository,
    TokenRepository,
    WebhookRepository,
)
from jobsched.settings import Settings

log = logging.getLogger(__name__)

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
    except Abort as abort:
        return abort.response
    except Forbidden as exc:
        errors = [{"field": exc.field, "reason": exc.reason}] if exc.field else None
        return problem(403, "Forbidden", exc.reason, errors)
    except QueryInvalid as exc:
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
    except (OverflowError, RecursionError) as exc:
        # A time past year 9999, a number beyond what a type holds, JSON nested deeper
        # than Python recurses: the input's fault wherever it surfaced. The named checks
        # come first (models, routes); this keeps any path they miss from being a 500.
        log.warning("input out of range in %s %s: %r", request.method, request.path, exc,
                    exc_info=True)
        return problem(422, "Unprocessable input",
                       "a value is out of range or nested too deeply")
    except Exception as exc:
        # A dependency unreachable, restarting or lost mid-request: 503, never 500.
        if isinstance(exc, request.app[UNAVAILABLE]):
            log.warning("dependency unavailable during %s %s: %r", request.method,
                        request.path, exc)
            return problem(503, "Service unavailable", "a dependency is not reachable; retry",
                           headers={"Retry-After": "1"})
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal server error")


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


def build_app(settings: Settings, jobs: JobRepository, tokens: TokenRepository,
              readiness: Readiness, *, unavailable: tuple[type[BaseException], ...] = (),
              token_errors: tuple[type[BaseException], ...] = (),
              cluster: ClusterView | None = None,
              replica: ReadRouting | None = None,
              secrets: SecretRepository | None = None,
              webhooks: WebhookRepository | None = None) -> web.Application:
    """The api. ``unavailable``: the adapters' exceptions that mean a dependency is
    unreachable right now (answered 503 with Retry-After); ``token_errors``: those that
    make a token lookup answer 503 (any database error: e.g. a schema not migrated yet)."""
    authenticator = Authenticator(tokens, settings.token_cache_s)
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app = web.Application(
        middlewares=[problem_middleware,
                     security_middleware(settings, authenticator, limiter, token_errors)],
        client_max_size=settings.max_body_bytes,
    )
    app[JOBS] = jobs
    app[SETTINGS] = settings
    app[READINESS] = readiness
    app[UNAVAILABLE] = unavailable
    app[OPENAPI] = orjson.dumps(openapi())
    if cluster is not None:
        app[CLUSTER] = cluster
    if replica is not None:
        app[REPLICA] = replica
    if secrets is not None:
        app[SECRETS] = secrets
        if not settings.secrets_key:
            log.warning("no JOBSCHED_SECRETS_KEY: PUT /api/v1/secrets is refused (403) "
                        "until one is set (make one with `jobsched secrets new-key`)")
    if webhooks is not None:
        app[WEBHOOKS] = webhooks
    if settings.secrets_key:  # seals namespace secrets and webhook signing secrets
        app[SECRET_BOX] = SecretBox.from_setting(settings.secrets_key)
    app[EGRESS] = settings.egress_policy()
    app.on_response_prepare.append(security_headers)
    install_previews(app)
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, _guarded(op))
    register_dashboard(app)
    return app
