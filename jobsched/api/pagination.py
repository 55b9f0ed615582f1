"""Cursor pagination, the same for every list: newest first, ``limit`` items and an opaque
``next_cursor`` (base64 of the last item's sort key) while more remain."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import orjson
from aiohttp import web

R = TypeVar("R")

Cursor = tuple[datetime, uuid.UUID]


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    """The sort key a cursor names; a cursor this API did not return is a 400."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = orjson.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(row_id)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise web.HTTPBadRequest(reason="cursor") from None


def page(rows: Sequence[R], limit: int, key: Callable[[R], Cursor]) -> tuple[list[R], str | None]:
    """The first ``limit`` of ``rows`` (fetched as ``limit + 1``) and the cursor of the
    next page, if the extra row says there is one."""
    kept = list(rows[:limit])
    if len(rows) <= limit:
        return kept, None
    return kept, encode_cursor(*key(kept[-1]))
