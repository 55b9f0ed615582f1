"""``/api/v1/webhooks``: endpoints that are told when executions and runs end, their secrets
and their delivery log (DESIGN.md "Webhooks"). An endpoint of another namespace is "not
found", exactly like one that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from jobsched.api.context import (
    EGRESS,
    SECRET_BOX,
    WEBHOOKS,
    Abort,
    json_response,
    parse_query,
    uuid_param,
)
from jobsched.api.models import (
    DeliveriesQuery,
    DeliveryList,
    DeliveryOut,
    PageQuery,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookWithSecret,
)
from jobsched.api.openapi import Operation
from jobsched.api.pagination import decode_cursor, page
from jobsched.api.problems import invalid, problem
from jobsched.api.routes.jobs import merge_patch
from jobsched.api.security import principal
from jobsched.crypto import SecretBox
from jobsched.domain.webhooks import ROTATION_OVERLAP, new_secret
from jobsched.ports import EndpointColumns, Row, WebhookRepository

#: The fields of an endpoint its owner sets: what a PATCH merges into.
OWNED_FIELDS = ("url", "events", "labels", "description", "enabled")


def webhook_out(row: Row) -> WebhookOut:
    return WebhookOut.model_validate(row)


def _columns(spec: WebhookCreate) -> EndpointColumns:
    return EndpointColumns(url=spec.url, events=list(spec.events), labels=spec.labels,
                           description=spec.description, enabled=spec.enabled)


def _repository(request: web.Request) -> WebhookRepository:
    webhooks = request.app.get(WEBHOOKS)
    if webhooks is None:
        raise Abort(problem(503, "Webhooks unavailable", "this api serves no webhooks"))
    return webhooks


def _box(request: web.Request) -> SecretBox:
    """Webhook secrets are stored sealed: a deployment without a key can keep none. A 403,
    like a job kind disabled on the deployment: retrying does not help, an operator must
    configure it."""
    box = request.app.get(SECRET_BOX)
    if box is None:
        raise Abort(problem(
            403, "Webhooks not configured",
            "this deployment has no JOBSCHED_SECRETS_KEY, so it cannot store webhook "
            "signing secrets; an operator sets one (`jobsched secrets new-key` makes it)"))
    return box


def _check_egress(request: web.Request, url: str, title: str) -> None:
    """A URL whose host is a literal address the egress rules refuse is a 422 now (a host
    name is checked when the worker resolves it)."""
    refusal = request.app[EGRESS].literal_refusal(url)
    if refusal is not None:
        raise Abort(problem(422, title, f"url: {refusal}",
                            [{"field": "url", "reason": refusal}]))


async def _endpoint(request: web.Request) -> Row:
    """The endpoint named by the path, in the caller's namespace; else 404."""
    endpoint_id = uuid_param(request)
    row = await _repository(request).get_endpoint(endpoint_id, principal(request).namespace)
    if row is None:
        raise web.HTTPNotFound()
    return row


def _with_secret(row: Row, secret: str, status: int) -> web.Response:
    body = WebhookWithSecret.model_validate({**row, "secret": secret})
    response = json_response(body, status)
    response.headers["Cache-Control"] = "no-store"  # the secret is shown this once
    return response


async def create_webhook(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        spec = WebhookCreate.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid webhook")
    _check_egress(request, spec.url, "Invalid webhook")
    box = _box(request)
    secret = new_secret()
    row = await _repository(request).create_endpoint(
        principal(request).namespace, _columns(spec), box.seal(secret.encode()))
    response = _with_secret(row, secret, 201)
    response.headers["Location"] = f"/api/v1/webhooks/{row['id']}"
    return response


async def list_webhooks(request: web.Request) -> web.Response:
    query: PageQuery = parse_query(request, PageQuery)
    rows = await _repository(request).list_endpoints(
        principal(request).namespace, after=decode_cursor(query.cursor), limit=query.limit + 1)
    items, cursor = page(rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return json_response(WebhookList(items=[webhook_out(r) for r in items], next_cursor=cursor))


async def get_webhook(request: web.Request) -> web.Response:
    return json_response(webhook_out(await _endpoint(request)))


async def patch_webhook(request: web.Request) -> web.Response:
    """Change an endpoint by JSON merge patch of its owned fields (url, events, labels,
    description, enabled); the result is validated whole. Enabling an endpoint that a
    410 disabled sends what waited meanwhile."""
    endpoint_id = uuid_param(request)
    body = await request.read()
    try:
        patch = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid request body", f"malformed JSON: {exc}",
                       [{"field": "body", "reason": f"malformed JSON: {exc}"}])
    if not isinstance(patch, dict):
        return problem(422, "Invalid webhook patch", "the body must be a JSON object",
                       [{"field": "body", "reason": "must be a JSON object"}])

    def change(row: Row) -> EndpointColumns:
        current: Mapping[str, Any] = {k: row[k] for k in OWNED_FIELDS}
        try:
            spec = WebhookCreate.model_validate_json(orjson.dumps(merge_patch(current, patch)))
        except ValidationError as exc:
            raise Abort(invalid(exc, "Invalid webhook patch")) from None
        if spec.url != row["url"]:
            _check_egress(request, spec.url, "Invalid webhook patch")
        return _columns(spec)

    row = await _repository(request).update_endpoint(endpoint_id, principal(request).namespace,
                                                     change)
    if row is None:
        raise web.HTTPNotFound()
    return json_response(webhook_out(row))


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete an endpoint and its delivery log; nothing more is sent to it."""
    endpoint_id = uuid_param(request)
    if not await _repository(request).delete_endpoint(endpoint_id,
                                                      principal(request).namespace):
        raise web.HTTPNotFound()
    return web.Response(status=204)


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new secret, shown once; the one it replaces keeps signing (a second signature)
    for 24 hours, so receivers can switch without losing a delivery."""
    endpoint = await _endpoint(request)  # a 404 first: no endpoint, whatever the config
    box = _box(request)
    secret = new_secret()
    row = await _repository(request).rotate_secret(
        endpoint["id"], principal(request).namespace, box.seal(secret.encode()),
        ROTATION_OVERLAP.total_seconds())
    if row is None:
        raise web.HTTPNotFound()
    return _with_secret(row, secret, 200)


def delivery_out(row: Row) -> DeliveryOut:
    return DeliveryOut.model_validate(row)


async def list_webhook_deliveries(request: web.Request) -> web.Response:
    query: DeliveriesQuery = parse_query(request, DeliveriesQuery)
    endpoint = await _endpoint(request)
    rows = await _repository(request).list_deliveries(
        endpoint["id"], state=query.state, after=decode_cursor(query.cursor),
        limit=query.limit + 1)
    items, cursor = page(rows, query.limit, lambda r: (r["created_at"], r["event_id"]))
    return json_response(DeliveryList(items=[delivery_out(r) for r in items],
                                      next_cursor=cursor))


async def redeliver_webhook(request: web.Request) -> web.Response:
    """Send one delivery again now, with a fresh retry schedule and the same webhook-id."""
    endpoint = await _endpoint(request)
    try:
        event_id = uuid.UUID(request.match_info["event_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    webhooks = _repository(request)
    row = await webhooks.redeliver(endpoint["id"], event_id)
    if row is not None:
        return json_response(delivery_out(row))
    if await webhooks.get_delivery(endpoint["id"], event_id) is None:
        raise web.HTTPNotFound()
    return problem(409, "Endpoint disabled",
                   f"the endpoint is disabled ({endpoint['disabled_reason'] or 'by a user'}); "
                   "enable it (PATCH enabled: true) to deliver again")


_NO_STORE = {"Cache-Control": "no-store: the secret is shown in this answer only"}

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/webhooks", create_webhook,
              "Create a webhook endpoint; its signing secret is in this answer only", "write",
              ok={201: WebhookWithSecret}, errors=(403,), body=WebhookCreate,
              response_headers={201: {"Location": "The endpoint's URL", **_NO_STORE}},
              links_to=("get_webhook", "patch_webhook", "delete_webhook",
                        "rotate_webhook_secret", "list_webhook_deliveries")),
    Operation("GET", "/api/v1/webhooks", list_webhooks, "List webhook endpoints, newest first",
              "read", ok={200: WebhookList}, errors=(400, 422), query=PageQuery),
    Operation("GET", "/api/v1/webhooks/{id}", get_webhook, "One webhook endpoint", "read",
              ok={200: WebhookOut}, errors=(404,)),
    Operation("PATCH", "/api/v1/webhooks/{id}", patch_webhook,
              "Change an endpoint (JSON merge patch of url, events, labels, description, "
              "enabled)", "write", ok={200: WebhookOut}, errors=(403, 404),
              patch_of=WebhookCreate),
    Operation("DELETE", "/api/v1/webhooks/{id}", delete_webhook,
              "Delete an endpoint and its delivery log", "write", ok={204: None},
              errors=(404,)),
    Operation("POST", "/api/v1/webhooks/{id}/rotate-secret", rotate_webhook_secret,
              "A new signing secret (shown once); the old one also signs for 24 h", "write",
              ok={200: WebhookWithSecret}, errors=(403, 404),
              response_headers={200: _NO_STORE}),
    Operation("GET", "/api/v1/webhooks/{id}/deliveries", list_webhook_deliveries,
              "An endpoint's deliveries, newest first", "read", ok={200: DeliveryList},
              errors=(400, 404, 422), query=DeliveriesQuery),
    Operation("POST", "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver",
              redeliver_webhook, "Send a delivery again now, with a fresh retry schedule",
              "write", ok={200: DeliveryOut}, errors=(404, 409)),
)
