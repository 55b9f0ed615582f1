"""RFC 9457 problem details: every 4xx and 5xx the API sends is one of these."""

from __future__ import annotations

import types
import typing
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from jobsched.api.models import UNION_TAGS, FieldProblem

PROBLEM_TYPE = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers
    )


# pydantic names Python types; API users think in JSON ones.
_JSON_TYPE_NAMES = {
    "list_type": "a list (JSON array)",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if part in UNION_TAGS:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Each pydantic error as ``{"field": "shell.argv[0]", "reason": "..."}``."""
    errors = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        reason = error["msg"]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblem):
            loc = (*loc, cause.field)
            reason = cause.reason
        elif error["type"] == "extra_forbidden":
            reason = "unknown field"
        elif error["type"] in _JSON_TYPE_NAMES:
            reason = f"must be {_JSON_TYPE_NAMES[error['type']]}"
        elif error["type"] == "json_invalid":
            reason = f"malformed JSON: {(error.get('ctx') or {}).get('error', reason)}"
        elif reason.startswith("Value error, "):
            reason = reason.removeprefix("Value error, ")
        field = _field_path(loc) or "body"
        errors.append({"field": f"{prefix}{field}" if prefix else field, "reason": reason})
    return errors


def unknown_patch_member(patch: dict[str, Any], model: type[BaseModel],
                         path: str = "") -> str | None:
    """The first member of a merge patch that ``model`` (extra="forbid") does not have, as a
    field path, at any depth the patch reaches through nested models. Validating the merged
    document misses one case: a null for an unknown member deletes nothing and vanishes
    (``{"": null}`` would be a 200 that changed nothing)."""
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, value in patch.items():
        field = fields.get(key)
        name = key or '""'  # an empty member name, shown as such
        where = f"{path}.{name}" if path else name
        if field is None:
            if model.model_config.get("extra") == "forbid":
                return where
            continue
        nested = _model_in(field.annotation)
        if isinstance(value, dict) and nested is not None:
            found = unknown_patch_member(value, nested, where)
            if found is not None:
                return found
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The one pydantic model an annotation holds (``X``, ``X | None``, ``Annotated[X, …]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin not in (typing.Union, types.UnionType):
        return None  # a dict or list of models: its members are the user's, not fields
    models = {m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None}
    return models.pop() if len(models) == 1 else None


def invalid(exc: ValidationError, title: str = "Invalid request body") -> web.Response:
    errors = validation_errors(exc)
    status = 400 if any(e["reason"].startswith("malformed JSON") for e in errors) else 422
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    return problem(status, title, detail, errors)
