"""The security rules as pure logic: tokens, roles, the rate limiter, the token cache,
secret lookup and masking, shell limits, and the generated OpenAPI document."""

from __future__ import annotations

import json
import resource
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsched.api.app import openapi
from jobsched.api.routes import OPERATIONS
from jobsched.api.security import Authenticator
from jobsched.domain.auth import (
    ANONYMOUS_ADMIN,
    Forbidden,
    Principal,
    RateLimiter,
    TokenBucket,
    check_access,
    check_kind,
    new_token,
    parse_bearer,
    token_digest,
)
from jobsched.settings import load_settings
from jobsched.worker.sandbox import SandboxError, ShellSandbox
from jobsched.worker.secrets import MissingSecret, SecretSource, mask


def principal(role: str) -> Principal:
    return Principal(uuid.uuid4(), "ns", role)  # type: ignore[arg-type]


def test_tokens_are_random_and_only_their_digest_identifies_them() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len({t for t, _ in tokens}) == 100
    for token, digest in tokens:
        assert parse_bearer(f"Bearer {token}") == token
        assert token_digest(token) == digest and len(digest) == 32
        assert token.encode() not in digest


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc",
                                    "Bearer jsk_short", "Bearer  " + "jsk_" + "a" * 44])
def test_malformed_bearer_headers(header: str | None) -> None:
    assert parse_bearer(header) is None


@pytest.mark.parametrize(("role", "write", "shell"), [
    ("admin", True, True), ("editor", True, False), ("viewer", False, False)])
def test_roles(role: str, write: bool, shell: bool) -> None:
    who = principal(role)
    check_access(who, "read")
    if write:
        check_access(who, "write")
    else:
        with pytest.raises(Forbidden, match="read-only"):
            check_access(who, "write")
    check_kind(who, "python", ())
    if shell:
        check_kind(who, "shell", ())
    else:
        with pytest.raises(Forbidden, match="only an admin"):
            check_kind(who, "shell", ())


def test_disabled_kinds_bind_admins_too() -> None:
    with pytest.raises(Forbidden, match="job kind 'http' is disabled") as raised:
        check_kind(ANONYMOUS_ADMIN, "http", ("shell", "http"))
    assert raised.value.field == "kind"


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 50), st.integers(1, 20),
       st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_token_bucket_never_allows_more_than_burst_plus_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, float(burst))
    now, allowed = 100.0, 0
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0:
            allowed += 1
    assert allowed <= burst + rate * (now - 100.0) + 1e-6


def test_rate_limiter_is_per_key_with_whole_second_retry_after() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert [limiter.retry_after("a", 10.0) for _ in range(3)] == [0, 0, 1]
    assert limiter.retry_after("b", 10.0) == 0
    assert limiter.retry_after("a", 11.0) == 0
    assert RateLimiter(rate=0, burst=1).retry_after("a", 0) == 0  # 0 lifts the limit


class FakeTokens:
    def __init__(self) -> None:
        self.rows: dict[bytes, dict[str, Any]] = {}
        self.lookups = 0

    async def authenticate(self, digest: bytes) -> dict[str, Any] | None:
        self.lookups += 1
        return self.rows.get(digest)


async def test_authenticator_caches_then_sees_a_revocation() -> None:
    tokens, now = FakeTokens(), [0.0]
    token, digest = new_token()
    tokens.rows[digest] = {"id": uuid.uuid4(), "namespace": "ns", "role": "viewer",
                           "name": None}
    auth = Authenticator(tokens, cache_s=5, clock=lambda: now[0])  # type: ignore[arg-type]
    assert (await auth.authenticate(token)).role == "viewer"  # type: ignore[union-attr]
    assert await auth.authenticate(token) is not None
    assert tokens.lookups == 1
    del tokens.rows[digest]  # revoked
    now[0] = 4.9
    assert await auth.authenticate(token) is not None  # still cached
    now[0] = 5.1
    assert await auth.authenticate(token) is None
    assert await auth.authenticate("jsk_" + "x" * 43) is None  # unknown: never cached
    assert await auth.authenticate("jsk_" + "x" * 43) is None
    assert tokens.lookups == 4


def test_secret_lookup_prefers_the_directory(tmp_path: Path) -> None:
    (tmp_path / "BOTH").write_text("from-file\n")
    (tmp_path / "CRLF").write_bytes(b"windows\r\n")
    source = SecretSource(tmp_path, {"JOBSCHED_SECRET_BOTH": "from-env",
                                     "JOBSCHED_SECRET_ENV_ONLY": "env-value"})
    assert source.lookup("BOTH") == "from-file"
    assert source.lookup("CRLF") == "windows"
    assert source.lookup("ENV_ONLY") == "env-value"
    resolved, used = source.resolve({"A": {"secret": "BOTH"}, "B": "plain"})
    assert resolved == {"A": "from-file", "B": "plain"} and used == ["from-file"]


@pytest.mark.parametrize(("name", "reason"), [
    ("MISSING", "is not configured on this worker"),
    ("../etc/passwd", "is not a valid secret name"),
    ("", "is not a valid secret name"),
    ("MISSING\n", "is not a valid secret name"),
    ("BIG", "is larger than"),
    ("BINARY", "is not UTF-8"),
    ("ADIR", "cannot be read"),
])
def test_missing_or_bad_secrets_name_themselves(tmp_path: Path, name: str,
                                                reason: str) -> None:
    (tmp_path / "BIG").write_bytes(b"x" * 70_000)
    (tmp_path / "BINARY").write_bytes(b"\xff\xfe")
    (tmp_path / "ADIR").mkdir()
    with pytest.raises(MissingSecret) as raised:
        SecretSource(tmp_path, {}).lookup(name)
    assert reason in str(raised.value) and repr(name) in str(raised.value)
    assert "xxxx" not in str(raised.value)


def test_mask_replaces_every_secret_of_four_characters_or_more() -> None:
    text = "token=abcdefgh and abcd and abc"
    assert mask(text, ["abcdefgh", "abcd", "abc"]) == "token=*** and *** and abc"
    assert mask(None, ["abcd"]) is None


def test_shell_limits_never_exceed_the_workers_own() -> None:
    settings_ = load_settings({"shell_open_files": 10**9}, environ={}, config_path=None)
    limits = dict(ShellSandbox.from_settings(settings_).limits(switching_user=False))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits[resource.RLIMIT_NOFILE][1] <= hard
    assert limits[resource.RLIMIT_CORE] == (0, 0)
    assert resource.RLIMIT_NPROC not in limits  # only for a user of its own
    own = dict(ShellSandbox(max_processes=5).limits(switching_user=True))
    assert own[resource.RLIMIT_NPROC][0] <= 5


def test_an_unknown_shell_user_stops_the_run() -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        ShellSandbox(user="no-such-user-here").identity()


def test_settings_for_security_from_the_environment() -> None:
    settings_ = load_settings({}, environ={"JOBSCHED_DISABLED_KINDS": "shell,http",
                                           "JOBSCHED_AUTH_ENABLED": "false"}, config_path=None)
    assert settings_.disabled_kinds == ("shell", "http") and not settings_.auth_enabled
    with pytest.raises(Exception, match="disabled_kinds"):
        load_settings({}, environ={"JOBSCHED_DISABLED_KINDS": "ftp"}, config_path=None)
    with pytest.raises(Exception, match="idempotency_ttl_s"):
        load_settings({}, environ={"JOBSCHED_IDEMPOTENCY_TTL_S": "3600"}, config_path=None)


def test_openapi_documents_every_route_from_the_models() -> None:
    document = openapi()
    documented = {(m.upper(), p) for p, ms in document["paths"].items() for m in ms}
    assert documented == {(op.method, op.path) for op in OPERATIONS}
    schemas = document["components"]["schemas"]
    create = document["paths"]["/api/v1/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobCreate"}
    assert set(schemas["JobCreate"]["properties"]) >= {"name", "schedule", "kind", "shell"}
    env = schemas["ShellSpec"]["properties"]["env"]["patternProperties"]
    assert {"$ref": "#/components/schemas/SecretRef"} in next(iter(env.values()))["oneOf"]
    patch = schemas["JobCreatePatch"]
    assert "required" not in patch
    assert {"type": "null"} in patch["properties"]["labels"]["anyOf"]
    for entry in (e for ms in document["paths"].values() for e in ms.values()):
        if entry["x-access"] != "open":
            assert "401" in entry["responses"] and "429" in entry["responses"]
        else:
            assert entry["security"] == []


def test_the_documents_examples_are_accepted_by_the_models() -> None:
    from jobsched.api.models import JobCreate, SchedulePreviewRequest

    for model in (JobCreate, SchedulePreviewRequest):
        examples = openapi()["components"]["schemas"][model.__name__]["examples"]
        assert examples
        for example in examples:
            model.model_validate_json(json.dumps(example))
