"""``executions logs --watch`` prints a running attempt's output line by line as it is
written, and the rest (a partial last line, the cut's note) once the attempt ended."""

from __future__ import annotations

from typing import Any

import pytest

from jobsched.cli_client import _OutputFollower


def _attempt(output: str | None, done: bool = False, number: int = 1) -> dict[str, Any]:
    return {"attempt": number, "output": output, "worker": "w1",
            "finished_at": "2026-01-01T00:00:00Z" if done else None,
            "outcome": "failed" if done else None, "exit_code": None}


def test_new_whole_lines_then_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    follower = _OutputFollower(lambda item: item["attempt"] > 1)
    follower.show(_attempt(None))
    follower.show(_attempt("one\ntw"))
    assert capsys.readouterr().out == "one\n"
    follower.show(_attempt("one\ntwo\nthr"))
    assert capsys.readouterr().out == "two\n"
    follower.show(_attempt("one\ntwo\nthree"))  # no new whole line
    assert capsys.readouterr().out == ""
    follower.show(_attempt("one\ntwo\nthree\n[output truncated: 9 more bytes]", done=True))
    assert capsys.readouterr().out == "three\n[output truncated: 9 more bytes]\n"
    follower.show(_attempt("one\ntwo\nthree\n[output truncated: 9 more bytes]", done=True))
    assert capsys.readouterr().out == ""  # an ended attempt is printed once


def test_a_running_cut_note_waits_for_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    follower = _OutputFollower(lambda item: False)
    follower.show(_attempt("a\nb\n[output truncated: 3 more bytes]"))
    follower.show(_attempt("a\nb\n[output truncated: 90 more bytes]"))
    follower.show(_attempt("a\nb\n[output truncated: 120 more bytes]", done=True))
    assert capsys.readouterr().out == "a\nb\n[output truncated: 120 more bytes]\n"


def test_a_later_attempt_gets_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    follower = _OutputFollower(lambda item: item["attempt"] > 1)
    follower.show(_attempt("first\n", done=True))
    follower.show(_attempt("second\n", number=2))
    out = capsys.readouterr().out
    assert out.startswith("first\n--- attempt 2 (running) on w1 ---\n")
    assert out.endswith("second\n")
