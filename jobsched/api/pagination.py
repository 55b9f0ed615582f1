"""Cursor pagination, the same for every list: newest first, ``limit`` items and an opaque
``next_cursor`` (base64 of the last item's sort key) while more remain.

A cursor is checked whole before any query sees it: it must decode to exactly what
``encode_cursor`` makes of some (UTC time, UUID) pair, byte for byte. Anything else
(another shape, a number where the id goes, a time with an offset, padding, a
non-canonical spelling) is a 400, so a forged cursor never reaches the database (nor,
with a read replica, costs the replica its place). A cursor only names a position in a
list the caller's own namespace already filters, so validating it is enough: a signature
would add a key to share between api processes and protect nothing more.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson
from aiohttp import web

R = TypeVar("R")

Cursor = tuple[datetime, uuid.UUID]


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([at.astimezone(UTC).isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    """The sort key a cursor names; a cursor this API did not return is a 400."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
        if not (isinstance(decoded, list) and len(decoded) == 2
                and all(isinstance(part, str) for part in decoded)):
            raise ValueError("not a [time, id] pair")
        at = datetime.fromisoformat(decoded[0])
        if at.utcoffset() != timedelta(0):
            raise ValueError("not UTC")
        row_id = uuid.UUID(decoded[1])
        if encode_cursor(at, row_id) != cursor:
            raise ValueError("not in the form this API writes")
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise web.HTTPBadRequest(reason="cursor") from None
    return at, row_id


def page(rows: Sequence[R], limit: int, key: Callable[[R], Cursor]) -> tuple[list[R], str | None]:
    """The first ``limit`` of ``rows`` (fetched as ``limit + 1``) and the cursor of the
    next page, if the extra row says there is one."""
    kept = list(rows[:limit])
    if len(rows) <= limit:
        return kept, None
    return kept, encode_cursor(*key(kept[-1]))
