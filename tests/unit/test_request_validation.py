"""Property tests of the request validators: whatever bytes arrive, the models either
accept a job the database can store or reject it with field errors that make a 4xx;
nothing raises anything else."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobsched.api.models import HttpSpec, JobCreate, SchedulePreviewRequest, ShellSpec
from jobsched.api.problems import invalid, validation_errors
from jobsched.api.routes.jobs import IDEMPOTENCY_KEY_RE, body_digest, merge_patch
from jobsched.domain.auth import parse_bearer

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

GOOD: dict[str, Any] = {"name": "n", "schedule": "0 9 * * *", "kind": "python",
                        "python": {"function": "pkg.mod:run", "args": {}}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def check_outcome(raw: bytes) -> JobCreate | None:
    """Validate as the API does: a job, or a problem that is a 4xx naming fields."""
    try:
        job = JobCreate.model_validate_json(raw)
    except ValidationError as exc:
        response = invalid(exc, "Invalid job")
        assert response.status in (400, 422)
        assert response.content_type == "application/problem+json"
        body = orjson.loads(response.body)  # type: ignore[arg-type]
        assert body["errors"] and all(e["field"] and e["reason"] for e in body["errors"])
        return None
    stored = orjson.dumps(job.model_dump(mode="json"))  # what goes into jsonb
    assert "\\u0000" not in stored.decode()  # PostgreSQL refuses NUL in jsonb text
    body_digest(job)
    return job


@PROPERTY
@given(st.binary(max_size=2000))
@example(b"\xff\xfe{}")
@example(b'{"name": "\xc3\x28"}')  # malformed UTF-8 inside a string
@example(b'{"name": "\\ud800"}')  # a lone surrogate
@example(b"\x00")
def test_any_bytes_are_a_job_or_a_4xx(raw: bytes) -> None:
    check_outcome(raw)


@PROPERTY
@given(st.dictionaries(st.sampled_from([*sorted(JobCreate.model_fields), "extra"]),
                       json_values, max_size=8))
def test_any_json_object_is_a_job_or_a_4xx(fields: dict[str, Any]) -> None:
    check_outcome(json.dumps(fields).encode())  # big integers, NaN and Infinity included


@PROPERTY
@given(json_values)
def test_python_args_are_stored_or_refused(args: Any) -> None:
    raw = json.dumps({**GOOD, "python": {"function": "pkg.mod:run", "args": {"a": args}}})
    job = check_outcome(raw.encode())
    if job is not None:
        assert all("\x00" not in s for s in strings_in(job.python.args))  # type: ignore[union-attr]


@pytest.mark.parametrize("depth", [31, 33, 150, 5000])
def test_deep_nesting_is_refused_not_crashed(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    raw = b'{"name":"n","schedule":"0 9 * * *","kind":"python","python":{"function":' \
          b'"a:b","args":{"x":' + nested.encode() + b"}}}"
    job = check_outcome(raw)
    assert (job is not None) == (depth <= 31)


@pytest.mark.parametrize(("field", "value"), [
    ("timeout_s", "1e400"), ("timeout_s", "-1e400"), ("max_runs", "9" * 30),
    ("max_runs", "2147483648"), ("jitter_s", "1" + "0" * 400),
    ("max_catchup", "9" * 5000), ("timeout_s", "NaN"), ("timeout_s", "Infinity"),
])
def test_huge_numbers_are_refused(field: str, value: str) -> None:
    raw = orjson.dumps(GOOD)[:-1] + f',"{field}":{value}}}'.encode()
    assert check_outcome(raw) is None


@pytest.mark.parametrize("args", ['{"n": 1e400}', '{"n": 18446744073709551616}',
                                  '{"n": -1e309}', '{"s\\u0000": 1}', '{"s": "a\\u0000b"}'])
def test_args_postgresql_cannot_hold_are_refused(args: str) -> None:
    raw = ('{"name":"n","schedule":"0 9 * * *","kind":"python","python":'
           '{"function":"a:b","args":' + args + "}}").encode()
    assert check_outcome(raw) is None


TEXT_FIELDS = [
    ("name", lambda v: {**GOOD, "name": v}),
    ("schedule", lambda v: {**GOOD, "schedule": v}),
    ("timezone", lambda v: {**GOOD, "timezone": v}),
    ("labels", lambda v: {**GOOD, "labels": {"k": v}}),
    ("python.function", lambda v: {**GOOD, "python": {"function": v}}),
    ("shell.argv", lambda v: {**GOOD, "kind": "shell", "python": None,
                              "shell": {"argv": [v]}}),
    ("shell.env", lambda v: {**GOOD, "kind": "shell", "python": None,
                             "shell": {"argv": ["x"], "env": {"E": v}}}),
    ("shell.cwd", lambda v: {**GOOD, "kind": "shell", "python": None,
                             "shell": {"argv": ["x"], "cwd": v}}),
    ("http.url", lambda v: {**GOOD, "kind": "http", "python": None,
                            "http": {"url": "http://h/" + v}}),
    ("http.body", lambda v: {**GOOD, "kind": "http", "python": None,
                             "http": {"url": "http://h/", "body": v}}),
    ("http.headers", lambda v: {**GOOD, "kind": "http", "python": None,
                                "http": {"url": "http://h/", "headers": {"X": v}}}),
]


@PROPERTY
@given(st.sampled_from(TEXT_FIELDS), st.text(max_size=40), st.text(max_size=40))
def test_nul_is_refused_in_every_text_field(where: Any, before: str, after: str) -> None:
    _, build = where
    assert check_outcome(json.dumps(build(before + "\x00" + after)).encode()) is None


@PROPERTY
@given(st.text(max_size=30), st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
       st.text(max_size=30))
def test_header_injection_is_refused(before: str, breaker: str, after: str) -> None:
    with pytest.raises(ValidationError):
        HttpSpec.model_validate({"url": "http://h/", "headers": {"X": before + breaker + after}})
    with pytest.raises(ValidationError):
        HttpSpec.model_validate({"url": "http://h/", "headers": {before + breaker + after: "v"}})
    with pytest.raises(ValidationError):
        HttpSpec.model_validate({"url": "http://h/" + before + breaker + after})


@PROPERTY
@given(st.text(min_size=1, max_size=60))
def test_header_names_are_http_tokens(name: str) -> None:
    try:
        HttpSpec.model_validate({"url": "http://h/", "headers": {name: "v"}})
    except ValidationError:
        return
    assert all(c.isascii() and c.isprintable() and c not in ' :()<>@,;"/[]?={}\\' for c in name)


@PROPERTY
@given(st.dictionaries(st.text("AB_1", min_size=1, max_size=10), st.one_of(
    st.text(max_size=10), st.fixed_dictionaries({"secret": st.text(max_size=10)}),
    st.integers(), st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
    max_size=4))
def test_env_values_are_text_or_a_secret_reference(env: dict[str, Any]) -> None:
    try:
        spec = ShellSpec.model_validate_json(json.dumps({"argv": ["x"], "env": env}))
    except ValidationError as exc:
        for error in validation_errors(exc):
            assert "<value>" not in error["field"]  # union tags stay out of field paths
            assert "<secret>" not in error["field"]
        return
    for value in spec.model_dump(mode="json")["env"].values():
        assert isinstance(value, str) or set(value) == {"secret"}


@PROPERTY
@given(st.binary(max_size=300))
def test_schedule_preview_bytes(raw: bytes) -> None:
    try:
        SchedulePreviewRequest.model_validate_json(raw)
    except ValidationError as exc:
        assert invalid(exc).status in (400, 422)


@PROPERTY
@given(json_values, json_values)
def test_merge_patch_never_raises_and_null_deletes(target: Any, patch: Any) -> None:
    merged = merge_patch(target, patch)
    if isinstance(patch, dict):
        assert isinstance(merged, dict)
        for key, value in patch.items():
            if value is None:
                assert key not in merged
    else:
        assert merged is patch  # returned as is (NaN != NaN, so not ==)


@PROPERTY
@given(st.text(max_size=300))
@example("Bearer jsk_" + "A" * 43)
@example("bearer  jsk_" + "A" * 43 + " ")
@example("Bearer jsk_" + "A" * 43 + "\r\nX-Evil: 1")
@example("Bearer jsk_" + "A" * 43 + "\n")
def test_bearer_parsing_never_raises(header: str) -> None:
    token = parse_bearer(header)
    if token is not None:
        assert token.startswith("jsk_") and len(token) == 47 and token.isascii()
        assert token.replace("_", "").replace("-", "").isalnum()


@PROPERTY
@given(st.text(max_size=300))
@example("0\n")  # Python's "$" also matches before a final newline: fullmatch is needed
def test_idempotency_keys_are_printable_ascii(key: str) -> None:
    if IDEMPOTENCY_KEY_RE.fullmatch(key):
        assert 1 <= len(key) <= 255
        assert all(0x21 <= ord(c) <= 0x7E for c in key)


def test_digest_ignores_spelling_but_not_meaning() -> None:
    one = JobCreate.model_validate_json(orjson.dumps(GOOD))
    reordered = JobCreate.model_validate_json(
        b'{"python": {"args": {}, "function": "pkg.mod:run"}, "kind": "python",'
        b' "schedule": "0 9 * * *", "name": "n", "timeout_s": 300}')
    changed = JobCreate.model_validate_json(orjson.dumps({**GOOD, "name": "m"}))
    assert body_digest(one) == body_digest(reordered) != body_digest(changed)


def preview_problem(body: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        SchedulePreviewRequest.model_validate_json(orjson.dumps(body))
    response = invalid(info.value, "Invalid schedule preview")
    assert response.status == 422
    return orjson.loads(response.body)["errors"]  # type: ignore[arg-type, no-any-return]


def test_a_hashed_schedule_validates_on_create_without_a_job_id() -> None:
    job = JobCreate.model_validate_json(orjson.dumps({**GOOD, "schedule": "H H(0-5) * * *"}))
    assert job.schedule == "H H(0-5) * * *"


def test_preview_of_a_hashed_schedule_needs_a_job_id_or_a_seed() -> None:
    errors = preview_problem({"schedule": "H * * * *"})
    assert [e["field"] for e in errors] == ["job_id"]
    assert "hashed values (H)" in errors[0]["reason"]
    job_id = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
    by_id = SchedulePreviewRequest.model_validate_json(
        orjson.dumps({"schedule": "H * * * *", "job_id": job_id}))
    assert by_id.seed_bytes() == bytes.fromhex(job_id.replace("-", ""))
    by_seed = SchedulePreviewRequest.model_validate_json(
        orjson.dumps({"schedule": "H * * * *", "seed": "team-a"}))
    assert by_seed.seed_bytes() == b"team-a"
    errors = preview_problem({"schedule": "H * * * *", "job_id": job_id, "seed": "x"})
    assert [e["field"] for e in errors] == ["seed"]
    errors = preview_problem({"schedule": "H * * * *", "job_id": "not-a-uuid"})
    assert [e["field"] for e in errors] == ["job_id"]
