"""``/api/v1/secrets``: a namespace's secrets. Admins write them; any role of the namespace
lists their names and times (to reference them in jobs); no route ever returns a value.
Values are sealed here (jobsched.crypto) before they reach the database."""

from __future__ import annotations

import re

from aiohttp import web
from pydantic import ValidationError

from jobsched.api.context import SECRET_BOX, SECRETS, json_response, parse_query
from jobsched.api.models import ListSecretsQuery, SecretList, SecretOut, SecretValue
from jobsched.api.openapi import Operation
from jobsched.api.problems import invalid, problem
from jobsched.api.security import principal
from jobsched.domain.auth import Forbidden
from jobsched.ports import SecretRepository

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
SECRET_NAME_RE = re.compile(SECRET_NAME_PATTERN)
_NAME_PARAM = {"name": {"type": "string", "pattern": SECRET_NAME_PATTERN}}


def _store(request: web.Request) -> SecretRepository:
    store = request.app.get(SECRETS)
    if store is None:  # an app built without one (tests of other routes)
        raise Forbidden("this api has no secrets store")
    return store


def _name(request: web.Request) -> str | None:
    name = request.match_info["name"]
    return name if SECRET_NAME_RE.fullmatch(name) else None


async def put_secret(request: web.Request) -> web.Response:
    name = _name(request)
    if name is None:
        reason = "must be 1-128 of A-Z, a-z, 0-9 and '_', not starting with a digit"
        return problem(422, "Invalid secret name", f"name: {reason}",
                       [{"field": "name", "reason": reason}])
    try:
        body = SecretValue.model_validate_json(await request.read() or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid secret")
    box = request.app.get(SECRET_BOX)
    if box is None:
        raise Forbidden("this deployment stores no secrets: its api has no "
                        "JOBSCHED_SECRETS_KEY (docs/security.md)")
    sealed = box.seal(body.value.encode())
    row, created = await _store(request).put_secret(principal(request).namespace, name,
                                                         sealed)
    response = json_response(SecretOut.model_validate(row), 201 if created else 200)
    response.headers["Location"] = f"/api/v1/secrets/{name}"
    return response


async def list_secrets(request: web.Request) -> web.Response:
    query: ListSecretsQuery = parse_query(request, ListSecretsQuery)
    rows = await _store(request).list_secrets(principal(request).namespace,
                                                   after=query.cursor, limit=query.limit + 1)
    items = rows[:query.limit]
    cursor = items[-1]["name"] if len(rows) > query.limit else None
    return json_response(SecretList(items=[SecretOut.model_validate(r) for r in items],
                                    next_cursor=cursor))


async def delete_secret(request: web.Request) -> web.Response:
    name = _name(request)
    if name is None or not await _store(request).delete_secret(
            principal(request).namespace, name):
        raise web.HTTPNotFound()
    return web.Response(status=204)


OPERATIONS: tuple[Operation, ...] = (
    Operation("PUT", "/api/v1/secrets/{name}", put_secret,
              "Create (201) or replace (200) a secret of the token's namespace", "admin",
              ok={201: SecretOut, 200: SecretOut}, errors=(403,), body=SecretValue,
              path_params=_NAME_PARAM,
              response_headers={201: {"Location": "The secret's URL"}}),
    Operation("GET", "/api/v1/secrets", list_secrets,
              "The namespace's secrets by name: names and times, never values", "read",
              ok={200: SecretList}, errors=(422,), query=ListSecretsQuery),
    Operation("DELETE", "/api/v1/secrets/{name}", delete_secret,
              "Delete a secret of the token's namespace", "admin", ok={204: None},
              errors=(403, 404), path_params=_NAME_PARAM),
)
