"""The security rules as pure logic: tokens, roles, the rate limiter, the token cache,
secret lookup and masking, shell limits, and the generated OpenAPI document."""

from __future__ import annotations

import json
import resource
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsched.api.app import openapi
from jobsched.api.routes import OPERATIONS
from jobsched.api.security import Authenticator
from jobsched.crypto import SecretBox, new_key
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
from jobsched.worker.results import render_output
from jobsched.worker.sandbox import ShellSandbox
from jobsched.worker.secrets import (
    DirectoryBackend,
    MissingSecret,
    SecretResolver,
    StoreBackend,
    longest,
    mask,
    worker_credentials,
)


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


class FakeStore:
    """The sealed secrets of each namespace, as the ``secrets`` table holds them."""

    def __init__(self, rows: dict[tuple[str, str], bytes]) -> None:
        self.rows = rows
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    async def sealed_secrets(self, namespace: str, names: Any) -> dict[str, bytes]:
        self.asked.append((namespace, tuple(names)))
        return {n: self.rows[(namespace, n)] for n in names if (namespace, n) in self.rows}


def _resolver(tmp_path: Path, store: FakeStore | None = None,
              key: str | None = None) -> SecretResolver:
    backends: list[Any] = []
    if store is not None:
        backends.append(StoreBackend(store, SecretBox.from_setting(key) if key else None))
    backends.append(DirectoryBackend(tmp_path))
    return SecretResolver(backends)


async def test_secrets_resolve_in_the_jobs_namespace_first_from_the_store(
        tmp_path: Path) -> None:
    key = new_key()
    box = SecretBox.from_setting(key)
    store = FakeStore({("a", "BOTH"): box.seal(b"from-store"),
                       ("b", "B_ONLY"): box.seal(b"b-value")})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "BOTH").write_text("from-file\n")
    (tmp_path / "a" / "CRLF").write_bytes(b"windows\r\n")
    run = _resolver(tmp_path, store, key).for_namespace("a")
    resolved = await run.resolve({"X": {"secret": "BOTH"}, "Y": {"secret": "CRLF"}, "Z": "plain"})
    assert resolved == {"X": "from-store", "Y": "windows", "Z": "plain"}
    assert sorted(run.used) == ["from-store", "windows"]
    assert store.asked == [("a", ("BOTH", "CRLF"))]  # one query, only namespace a


async def test_another_namespaces_secret_is_exactly_like_a_missing_one(tmp_path: Path) -> None:
    key = new_key()
    store = FakeStore({("b", "B_ONLY"): SecretBox.from_setting(key).seal(b"b-value")})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "B_FILE").write_text("b-file")
    resolver = _resolver(tmp_path, store, key)
    errors = []
    for name in ("B_ONLY", "B_FILE", "NOBODY"):
        with pytest.raises(MissingSecret) as raised:
            await resolver.for_namespace("a").resolve({"X": {"secret": name}})
        errors.append(str(raised.value).replace(name, "NAME"))
    assert errors[0] == errors[1] == errors[2]
    assert "is not defined in namespace 'a'" in errors[0]
    assert all(namespace == "a" for namespace, _ in store.asked)


@pytest.mark.parametrize(("name", "reason"), [
    ("MISSING", "is not defined in namespace 'ns'"),
    ("../etc/passwd", "is not a valid secret name"),
    ("", "is not a valid secret name"),
    ("MISSING\n", "is not a valid secret name"),
    ("BIG", "is larger than"),
    ("BINARY", "is not UTF-8"),
    ("ADIR", "cannot be read"),
])
async def test_missing_or_bad_secrets_name_themselves(tmp_path: Path, name: str,
                                                      reason: str) -> None:
    folder = tmp_path / "ns"
    folder.mkdir()
    (folder / "BIG").write_bytes(b"x" * 70_000)
    (folder / "BINARY").write_bytes(b"\xff\xfe")
    (folder / "ADIR").mkdir()
    with pytest.raises(MissingSecret) as raised:
        await _resolver(tmp_path).for_namespace("ns").resolve({"X": {"secret": name}})
    assert reason in str(raised.value) and repr(name) in str(raised.value)
    assert "xxxx" not in str(raised.value)


async def test_a_store_secret_without_the_key_fails_clearly(tmp_path: Path) -> None:
    store = FakeStore({("a", "S"): SecretBox.from_setting(new_key()).seal(b"v")})
    for key in (None, new_key()):
        with pytest.raises(MissingSecret, match="JOBSCHED_SECRETS_KEY"):
            await _resolver(tmp_path, store, key).for_namespace("a").resolve(
                {"X": {"secret": "S"}})


def test_mask_replaces_every_secret_of_four_characters_or_more() -> None:
    text = "token=abcdefgh and abcd and abc"
    assert mask(text, ["abcdefgh", "abcd", "abc"]) == "token=*** and *** and abc"
    assert mask(None, ["abcd"]) is None


@pytest.mark.parametrize("limit", range(0, 40))
def test_a_secret_cut_by_the_output_limit_leaves_no_prefix(limit: int) -> None:
    secret = "S3CRETVALUE"
    data = ("x" * 10 + secret + "y" * 10).encode()
    kept = data[:limit + longest([secret])]  # what a run keeps of its output
    shown = render_output(kept, len(data), limit, [secret])
    assert "S3C" not in shown and "VALUE" not in shown, shown
    assert len(shown.split("\n[output truncated")[0].encode()) <= limit


def test_the_workers_own_credentials_are_masked() -> None:
    settings_ = load_settings({}, environ={
        "JOBSCHED_DATABASE_URL": "postgresql://u:db-password@h/d",
        "JOBSCHED_AMQP_URL": "amqp://u:amqp-password@h/"}, config_path=None)
    values = worker_credentials(settings_, {"AWS_SECRET_ACCESS_KEY": "aws-secret"})
    assert set(values) == {"db-password", "amqp-password", "aws-secret"}


def test_shell_limits_never_exceed_the_workers_own() -> None:
    settings_ = load_settings({"shell_open_files": 10**9}, environ={}, config_path=None)
    limits = dict(ShellSandbox.from_settings(settings_).limits())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits[resource.RLIMIT_NOFILE][1] <= hard
    assert limits[resource.RLIMIT_CORE] == (0, 0)
    own = dict(ShellSandbox(max_processes=5).limits())
    assert own[resource.RLIMIT_NPROC][0] <= 5


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


async def test_python_output_and_errors_are_masked_before_they_are_cut() -> None:
    from jobsched.tasks import TaskContext, TaskRegistry
    from jobsched.worker.python import run_python

    credential = "broker-password-123"

    def leak() -> str:
        return "x" * 90 + credential

    def fail() -> None:
        raise RuntimeError("y" * 3980 + credential)

    registry = TaskRegistry()
    registry.register(leak, "t:leak")
    registry.register(fail, "t:fail")
    context = TaskContext(uuid.uuid4(), 1, uuid.uuid4(), datetime.now(UTC))
    leaked = await run_python({"function": "t:leak"}, 5, 100, registry, context,
                              masked=[credential])
    failed = await run_python({"function": "t:fail"}, 5, 100, registry, context,
                              masked=[credential])
    assert leaked.output is not None and failed.error is not None
    for shown in (leaked.output, failed.error):
        assert "broker" not in shown and "123" not in shown, shown
