"""The OpenAPI 3.1 document, generated from the route table and the pydantic models that
validate requests and shape responses: there is no second, hand-kept copy of a schema.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from jobsched.api.models import Problem
from jobsched.domain.auth import Access

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
JSON = "application/json"
PROBLEM = "application/problem+json"

# Every error an operation may answer, beyond those it lists itself.
_PROTECTED_ERRORS = (401, 429, 431)
_ALWAYS_ERRORS = (503,)
_ACCESS_TEXT = {"read": "Needs a token of any role.",
                "write": "Needs an admin or editor token.",
                "admin": "Needs an admin token."}
_ERROR_TITLES = {
    400: "Malformed request (JSON, cursor or header)",
    401: "No valid bearer token",
    403: "The token's role, the job kind, the namespace quota or the deployment's "
         "configuration does not allow this",
    404: "No such resource in the token's namespace",
    405: "Method not allowed",
    409: "Conflict with the resource's state or an earlier Idempotency-Key",
    413: "Request body too large",
    422: "Invalid request: each field error is listed in `errors`",
    429: "Rate limit of the token, or of failed authentications from this address, "
         "exceeded; see Retry-After",
    431: "Too many request headers",
    503: "A dependency is unreachable, or the server is busy (previews); retry",
}


@dataclass(frozen=True)
class Operation:
    """One route: the router registers it and the document describes it, from this entry."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access | None  # None: open, no token needed
    ok: dict[int, type[BaseModel] | None] = field(default_factory=lambda: {200: None})
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_optional: bool = False  # the route also takes no body at all
    patch_of: type[BaseModel] | None = None  # body is an RFC 7396 merge patch of this model
    query: type[BaseModel] | None = None
    request_headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    response_headers: dict[int, dict[str, str]] = field(default_factory=dict)
    ok_content_type: str = JSON
    # Path parameters other than a UUID {id}: name -> JSON schema.
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Operations (by handler name) whose {id} is the "id" of this operation's 2xx body:
    # OpenAPI links, which let clients and stateful testers follow a created resource.
    links_to: tuple[str, ...] = ()

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def _models(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Problem, "serialization")]
    for op in operations:
        for model in (op.body, op.patch_of, op.query):
            if model is not None:
                wanted.append((model, "validation"))
        wanted += [(m, "serialization") for m in op.ok.values() if m is not None]
    return list(dict.fromkeys(wanted))


def _merge_patch_schemas(name: str, components: dict[str, Any]) -> str:
    """Add the schema of an RFC 7396 merge patch of component ``name`` (and of the
    components it refers to): objects at any depth have only optional members, and null
    (delete) is allowed for each. Returns the patch component's name."""
    patch_name = f"{name}Patch"
    if patch_name in components:
        return patch_name
    components[patch_name] = {}  # reserved first: a component may refer to itself

    def patched(schema: Any) -> Any:
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            target = schema["$ref"].rsplit("/", 1)[-1]
            return {**schema, "$ref": REF.format(model=_merge_patch_schemas(target, components))}
        result = dict(schema)
        for key in ("anyOf", "oneOf", "allOf"):
            if key in result:
                result[key] = [patched(s) for s in result[key]]
        if result.get("type") == "object" or "properties" in result:
            result.pop("required", None)
            result.pop("minProperties", None)
            result["properties"] = {k: _nullable(patched(v))
                                    for k, v in result.get("properties", {}).items()}
            if isinstance(result.get("additionalProperties"), dict):
                result["additionalProperties"] = _nullable(patched(result["additionalProperties"]))
            if "patternProperties" in result:
                result["patternProperties"] = {k: _nullable(patched(v))
                                               for k, v in result["patternProperties"].items()}
        return result

    schema = patched(copy.deepcopy(components[name]))
    schema["title"] = f"{components[name].get('title', name)} merge patch"
    components[patch_name] = schema
    return patch_name


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "null":
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    params = []
    for name, prop in schema.get("properties", {}).items():
        # An absent parameter is the model's None: a query string has no null to send.
        choices = [c for c in prop.get("anyOf", []) if c.get("type") != "null"]
        if len(choices) == 1:
            prop = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")},
                    **choices[0]}
        param: dict[str, Any] = {"name": name, "in": "query", "required": False,
                                 "schema": prop}
        if prop.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def build_openapi(operations: Sequence[Operation], *, title: str, version: str,
                  description: str = "") -> dict[str, Any]:
    keys, schemas = models_json_schema(_models(operations), ref_template=REF)
    components = dict(schemas.get("$defs", {}))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return keys[(model, mode)]

    problem = {PROBLEM: {"schema": ref(Problem, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                 "x-access": op.access or "open"}
        if op.access is None:
            entry["security"] = []
        else:
            entry["description"] = _ACCESS_TEXT[op.access]
        params: list[dict[str, Any]] = []
        for name in re.findall(r"{(\w+)}", op.path):
            schema = op.path_params.get(name, {"type": "string", "format": "uuid"})
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
        if op.query is not None:
            query_ref = ref(op.query, "validation")["$ref"].rsplit("/", 1)[-1]
            params += _query_parameters(components[query_ref])
        for name, schema in op.request_headers.items():
            params.append({"name": name, "in": "header", "required": False, **schema})
        if params:
            entry["parameters"] = params
        if op.body is not None:
            entry["requestBody"] = {"required": not op.body_optional, "content": {
                JSON: {"schema": ref(op.body, "validation")}}}
        if op.patch_of is not None:
            base = ref(op.patch_of, "validation")["$ref"].rsplit("/", 1)[-1]
            patch_name = _merge_patch_schemas(base, components)
            patch_ref = {"$ref": REF.format(model=patch_name)}
            entry["requestBody"] = {"required": True, "content": {
                "application/merge-patch+json": {"schema": patch_ref},
                JSON: {"schema": patch_ref}}}
        responses: dict[str, Any] = {}
        for status, model in op.ok.items():
            schema = ref(model, "serialization") if model else {"type": "object"}
            response: dict[str, Any] = {"description": "OK",
                                        "content": {op.ok_content_type: {"schema": schema}}}
            if status == 204:
                response = {"description": "Done; no body"}
            if op.links_to:
                response["links"] = {target: {"operationId": target,
                                              "parameters": {"id": "$response.body#/id"}}
                                     for target in op.links_to}
            headers = op.response_headers.get(status)
            if headers:
                response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                       for name, text in headers.items()}
            responses[str(status)] = response
        errors = set(op.errors) | set(_ALWAYS_ERRORS)
        if op.access is not None:
            errors |= set(_PROTECTED_ERRORS)
        if op.body is not None or op.patch_of is not None:
            errors |= {400, 413, 422}
        for status in sorted(errors):
            response = {"description": _ERROR_TITLES[status], "content": problem}
            if status in (429, 503):
                response["headers"] = {"Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
            if status == 401:
                response["headers"] = {"WWW-Authenticate": {
                    "description": "The bearer scheme", "schema": {"type": "string"}}}
            responses[str(status)] = response
        entry["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `jobsched token create`; it grants one "
                               "namespace with the role admin, editor or viewer."}},
        },
        "security": [{"bearer": []}],
    }
