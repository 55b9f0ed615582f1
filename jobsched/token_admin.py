"""``jobsched token create|list|revoke``: API tokens, managed straight in PostgreSQL.

Whoever can reach the database can mint tokens, so these commands need no token
themselves; nobody else can (no API route creates tokens).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobsched.adapters import postgres
from jobsched.adapters.postgres.tokens import PostgresTokens
from jobsched.domain.auth import NAMESPACE_RE, ROLES, new_token
from jobsched.domain.durations import DurationError, parse_duration

HINT_LENGTH = 8  # "jsk_" and 4 random characters: enough to tell tokens apart


class TokenAdminError(Exception):
    """A bad argument or a missing token: the message is for the person at the terminal."""


def parse_lifetime(text: str) -> timedelta:
    """A token's lifetime (``--expires-in``): a duration of ``jobsched.domain.durations``
    (``3600``, ``15m``, ``12h``, ``30d``, ``1h30m``), more than 0."""
    try:
        lifetime = parse_duration(text)
    except DurationError as exc:
        raise TokenAdminError(str(exc)) from None
    if lifetime <= timedelta(0):
        raise TokenAdminError(f"duration {text.strip()!r} must be more than 0")
    return lifetime


def _row(record: Any) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, uuid.UUID) else value)
            for key, value in dict(record).items()}


async def create_token(dsn: str, namespace: str, role: str, name: str | None,
                       expires_in: timedelta | None) -> tuple[str, dict[str, Any]]:
    """A new token (the only time it exists in clear) and its stored description."""
    if not NAMESPACE_RE.fullmatch(namespace):
        raise TokenAdminError(f"namespace {namespace!r}: use 1-63 of a-z, 0-9, '_', '.', '-', "
                              "starting with a letter or digit")
    if role not in ROLES:
        raise TokenAdminError(f"role {role!r}: one of {', '.join(ROLES)}")
    token, digest = new_token()
    try:
        expires_at = datetime.now(UTC) + expires_in if expires_in else None
    except OverflowError:
        raise TokenAdminError(f"an expiry {expires_in} from now is past the year 9999") from None
    pool = await postgres.create_pool(dsn, max_size=1)
    try:
        row = await PostgresTokens(pool).create(digest, token[:HINT_LENGTH], namespace, role,
                                            name, expires_at)
    finally:
        await pool.close()
    return token, _row(row)


async def list_tokens(dsn: str, namespace: str | None) -> list[dict[str, Any]]:
    pool = await postgres.create_pool(dsn, max_size=1)
    try:
        return [_row(r) for r in await PostgresTokens(pool).list(namespace)]
    finally:
        await pool.close()


async def revoke_token(dsn: str, token_id: str) -> dict[str, Any]:
    try:
        key = uuid.UUID(token_id)
    except ValueError:
        raise TokenAdminError(f"{token_id!r} is not a token id (see jobsched token list)")\
            from None
    pool = await postgres.create_pool(dsn, max_size=1)
    try:
        row = await PostgresTokens(pool).revoke(key)
    finally:
        await pool.close()
    if row is None:
        raise TokenAdminError(f"no token with id {token_id}")
    return _row(row)
