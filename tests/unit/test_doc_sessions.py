"""The reading of the docs' shell sessions (tests/doc_sessions.py): what is a session, a
step, a marker, and what compares equal."""

from __future__ import annotations

import pytest

from tests.doc_sessions import Bindings, MarkerError, compare, normalise, parse_sessions

JOB = "3e5deb85-ec5a-40c6-b0f5-6ab2bb6f8135"
RUN = "eefbc94d-d3e9-4871-8a12-beb3148e1b49"
PRINTED_JOB = "11111111-2222-4333-8444-555555555555"
PRINTED_RUN = "66666666-7777-4888-9999-aaaaaaaaaaaa"

DOC = f"""# Title

```sh
make run
```

```console
$ jobsched jobs create --name x \\
    -s '@daily'
created job {JOB} (x)
$ jobsched jobs get {JOB}; echo "exit $?"
exit 0
```

<!-- not-run: needs Ctrl-C -->
```
$ jobsched jobs trigger {JOB} --watch
```
"""


def test_sessions_steps_and_markers_are_read_with_their_lines() -> None:
    first, second = parse_sessions(DOC, "doc.md")
    assert (first.name, first.not_run) == ("doc.md:7", None)
    create, get = first.steps
    assert (create.line, create.command) == (8, "jobsched jobs create --name x     -s '@daily'")
    assert create.expected == (f"created job {JOB} (x)",)
    assert (get.line, get.expected) == (11, ("exit 0",))
    assert (second.name, second.not_run) == ("doc.md:16", "needs Ctrl-C")
    assert second.steps[0].expected == ()


@pytest.mark.parametrize("text", [
    "<!-- not-run: -->\n```\n$ true\n```\n",
    "<!-- not-run: why -->\n```python\nprint()\n```\n",
    "<!-- not-run: why -->\nsome prose\n```\n$ true\n```\n",
    "text\n<!-- not-run: why -->\n",
])
def test_a_marker_without_reason_or_session_is_an_error(text: str) -> None:
    with pytest.raises(MarkerError, match=r"^doc\.md:\d+: not-run marker"):
        parse_sessions(text, "doc.md")


def test_what_varies_between_runs_is_normalised() -> None:
    assert normalise("  2026-11-28 09:00:00 +01:00  (2026-11-28 08:00:00Z, in 23h)") == \
        " <time> (<time>, <when>)"
    assert normalise("08:53:14  queued     attempt 1") == "<time> queued attempt 1"
    assert normalise("took 12ms, then 1.5s; started 3m ago (now)") == \
        "took <duration>, then <duration>; started <when> (<when>)"
    assert normalise("exit 3") == "exit 3"


def test_ids_of_output_are_bound_and_typed_into_later_commands() -> None:
    bindings = Bindings(fixed={"http://127.0.0.1:8080": "http://127.0.0.1:41234"})
    assert compare((f"created job {JOB} (x)",), f"created job {PRINTED_JOB} (x)\n",
                   bindings) is None
    assert bindings.command(f"jobsched jobs get {JOB} --url http://127.0.0.1:8080") == \
        f"jobsched jobs get {PRINTED_JOB} --url http://127.0.0.1:41234"
    missing = "00000000-0000-4000-8000-000000000000"
    assert bindings.command(f"jobsched jobs get {missing}") == f"jobsched jobs get {missing}"
    assert compare((f"job {missing} not found",), f"job {missing} not found", bindings) is None
    assert compare((f"{JOB} at http://127.0.0.1:8080",),
                   f"{PRINTED_JOB} at http://127.0.0.1:41234", bindings) is None


def test_an_id_shown_twice_must_be_printed_twice_the_same() -> None:
    expected = (f"run {RUN}", f"again {RUN}")
    assert compare(expected, f"run {PRINTED_RUN}\nagain {PRINTED_JOB}\n", Bindings()) \
        is not None
    bindings = Bindings()
    assert compare(expected, f"run {PRINTED_RUN}\nagain {PRINTED_RUN}\n", bindings) is None
    assert bindings.ids == {RUN: PRINTED_RUN}


def test_an_ellipsis_stands_for_any_lines_and_columns_may_widen() -> None:
    expected = ("next fires:", "  2026-11-28 09:00:00 +01:00", "  ...", "done (in 5s)")
    printed = ("next fires:\n  2026-12-04 09:00:00 +01:00\n  2026-12-05 09:00:00 +01:00\n"
               "  2026-12-06 09:00:00 +01:00\ndone    (in 23h)\n")
    assert compare(expected, printed, Bindings()) is None
    assert compare(expected, "next fires:\ndone (in 5s)\n", Bindings()) is not None


def test_a_difference_is_a_diff_naming_both_sides() -> None:
    diff = compare((f"job {JOB} paused: paused", "exit 0"),
                   f"job {PRINTED_JOB} paused: active\nexit 0\n", Bindings())
    assert diff is not None
    assert "--- doc\n+++ printed" in diff
    assert "-job <new id> paused: paused\n+job <new id> paused: active" in diff
    assert compare(("a",), "a\nb\n", Bindings()) is not None


def test_a_watch_line_of_the_running_state_may_be_printed_or_not() -> None:
    expected = ("08:53:14  queued     attempt 1", "08:53:14  succeeded  attempt 1 on w")
    printed = "09:00:01  queued     attempt 1\n09:00:01  running    attempt 1 on w\n" \
              "09:00:02  succeeded  attempt 1 on w\n"
    assert compare(expected, printed, Bindings()) is None
    assert compare(expected, printed.replace("succeeded", "failed"), Bindings()) is not None
    assert compare(("running attempt 1",), "", Bindings()) is not None
