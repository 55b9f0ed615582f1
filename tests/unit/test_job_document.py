"""The api's job answer written without a model: byte for byte what JobOut writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID

from jobsched.api.context import document_response
from jobsched.api.models import ExecutionOut, JobCreate, JobOut
from jobsched.api.routes.jobs import job_columns, job_document

WHEN = datetime(2026, 12, 6, 15, 0, 0, 123456, tzinfo=UTC)
SPECS = [
    {"name": "plain", "schedule": "0 0 1 1 *", "kind": "python",
     "python": {"function": "m:f"}},
    {"name": "rich", "schedule": "*/5 * * * *", "timezone": "Europe/Berlin", "kind": "http",
     "http": {"method": "POST", "url": "https://example.com/hook", "body": "é\u2028x",
              "headers": {"Authorization": {"secret": "TOKEN"}}},
     "labels": {"team": "billing", "tier": "1"}, "retry": {"max_attempts": 3, "backoff_s": 1.5},
     "start_at": "2027-01-01T00:00:00+02:00", "end_at": "2028-01-01T00:00:00Z",
     "jitter_s": 2.25, "priority": "high", "max_runs": 7, "timeout_s": 1e-3},
    {"name": "once", "schedule": "immediate", "kind": "shell",
     "shell": {"argv": ["/bin/echo", "1"], "env": {"A": "b"}}, "concurrency": "forbid"},
]


def _row(spec: dict[str, object], state: str, last: dict[str, object] | None) -> dict:
    job = JobCreate.model_validate_json(orjson.dumps(spec))
    job_id = uuid.uuid4()
    columns = job_columns(job, job_id, WHEN)
    # The id as the database driver returns it: its own uuid.UUID subclass.
    return {"id": UUID(str(job_id)), "namespace": "team-a", "state": state,
            "next_fire_at": columns.next_fire_at, "created_at": WHEN,
            "updated_at": WHEN.replace(microsecond=0) + timedelta(seconds=1),
            "spec": columns.spec, "last_execution": last}


def _execution(job_id: uuid.UUID) -> dict[str, object]:
    return {"id": uuid.uuid4(), "job_id": job_id, "scheduled_for": WHEN, "attempt": 2,
            "state": "failed", "priority": 0, "queued_at": WHEN, "started_at": WHEN,
            "finished_at": WHEN + timedelta(seconds=1), "exit_code": 1, "error": "boom",
            "output": "out", "worker": "worker-1", "args": {"n": 1.5}}


def _answer(row: dict) -> bytes:
    body = document_response(job_document(row)).body
    assert isinstance(body, bytes)
    return body


def _model(row: dict) -> JobOut:
    """What the api answered before job_document: the row through JobOut."""
    last = row["last_execution"]
    return JobOut.model_validate({
        **row["spec"], **{k: v for k, v in row.items() if k not in ("spec", "last_execution")},
        "next_fire_at": row["next_fire_at"] if row["state"] == "active" else None,
        "last_execution": ExecutionOut.model_validate(last) if last else None})


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
@pytest.mark.parametrize("state", ["active", "paused", "completed", "cancelled"])
def test_the_document_is_what_the_model_writes(spec: dict[str, object], state: str) -> None:
    row = _row(spec, state, None)
    ours = _answer(row)
    assert ours == _model(row).model_dump_json().encode()
    assert (orjson.loads(ours)["next_fire_at"] is None) == (state != "active")


def test_the_last_execution_is_written_as_its_model_writes_it() -> None:
    row = _row(SPECS[0], "active", None)
    row["last_execution"] = _execution(row["id"])
    ours = _answer(row)
    assert ours == _model(row).model_dump_json().encode()
    last = orjson.loads(ours)["last_execution"]
    assert last["scheduled_for"] == "2026-12-06T15:00:00.123456Z" and last["priority"] == "high"


def test_a_time_in_another_zone_keeps_its_offset() -> None:
    row = _row(SPECS[0], "active", None)
    row["created_at"] = WHEN.astimezone(timezone(timedelta(hours=2)))
    ours = orjson.loads(_answer(row))
    assert ours["created_at"] == "2026-12-06T17:00:00.123456+02:00"
    assert ours["updated_at"] == "2026-12-06T15:00:01Z"


def test_anything_else_json_cannot_hold_is_still_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        document_response({"spec": {1, 2}})


def test_a_spec_key_named_as_a_field_does_not_replace_it() -> None:
    row = _row(SPECS[0], "paused", None)
    row["spec"] = {**row["spec"], "id": "not-the-id", "state": "active", "next_fire_at": "x"}
    ours = _answer(row)
    assert ours == _model(row).model_dump_json().encode()
    shown = orjson.loads(ours)
    assert shown["id"] == str(row["id"]) and shown["state"] == "paused"
    assert shown["next_fire_at"] is None
