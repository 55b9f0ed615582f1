"""``jobs create`` policies and idempotency key, ``--max-attempts`` (and its old name),
``jobs trigger --arg``: what the CLI sends, against a recording HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

from jobsched.cli import main

JOB = "00000000-0000-4000-8000-000000000001"
EXECUTION = {"id": "00000000-0000-4000-8000-000000000002", "job_id": JOB, "state": "queued",
             "scheduled_for": "2026-12-02T00:00:00Z", "attempt": 1, "worker": None,
             "queued_at": "2026-12-02T00:00:00Z", "started_at": None, "finished_at": None,
             "exit_code": None, "error": None, "output": None}


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.seen.append({"path": self.path, "body": json.loads(raw) if raw else None,
                          "idempotency_key": self.headers.get("Idempotency-Key")})
        if self.path == "/api/v1/schedules/preview":
            answer: Any = {"items": []}
        elif self.path == "/api/v1/jobs":
            answer = {**json.loads(raw), "id": JOB, "next_fire_at": None}
        else:
            answer = EXECUTION
        body = json.dumps(answer).encode()
        self.send_response(201 if self.path != "/api/v1/schedules/preview" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _create(api: str, *options: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["jobs", "create", "--url", api, "-y", "--name", "n",
                                       "-s", "@every 1h", *options, "--", "/bin/true"])
    assert result.exit_code == 0, result.output
    [created] = [r for r in _Recorder.seen if r["path"] == "/api/v1/jobs"]
    return created


def test_create_sends_policies_attempts_and_the_idempotency_key(api: str) -> None:
    created = _create(api, "--concurrency", "forbid", "--misfire", "skip",
                      "--max-attempts", "3", "--idempotency-key", "nightly-v1")
    assert created["body"]["concurrency"] == "forbid"
    assert created["body"]["misfire"] == "skip"
    assert created["body"]["retry"] == {"max_attempts": 3}
    assert created["idempotency_key"] == "nightly-v1"


def test_retries_is_the_hidden_old_name_of_max_attempts(api: str) -> None:
    assert _create(api, "--retries", "4")["body"]["retry"] == {"max_attempts": 4}
    help_text = CliRunner().invoke(main, ["jobs", "create", "--help"]).output
    assert "--max-attempts" in help_text and "--retries" not in help_text


def test_max_attempts_and_a_different_retries_is_a_usage_error(api: str) -> None:
    result = CliRunner().invoke(main, ["jobs", "create", "--url", api, "-y", "--name", "n",
                                       "-s", "@every 1h", "--max-attempts", "3",
                                       "--retries", "2", "--", "/bin/true"])
    assert result.exit_code == 2
    assert "--retries is the old name of --max-attempts" in result.output


def test_create_without_the_options_sends_none_of_them(api: str) -> None:
    created = _create(api)
    assert not {"concurrency", "misfire", "retry"} & set(created["body"])
    assert created["idempotency_key"] is None


def test_trigger_sends_its_args_and_nothing_without_them(api: str) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["jobs", "trigger", JOB, "--url", api, "--arg", "team=ops",
                                "--arg", "count=3"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(main, ["jobs", "trigger", JOB, "--url", api])
    assert done.exit_code == 0, done.output
    with_args, without = _Recorder.seen
    assert with_args == {"path": f"/api/v1/jobs/{JOB}/trigger", "idempotency_key": None,
                         "body": {"args": {"team": "ops", "count": 3}}}
    assert without["body"] is None
