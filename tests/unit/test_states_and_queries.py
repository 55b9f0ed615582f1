"""One definition of each state machine, and SQL that binds by name: the enums match what
the schema's CHECK constraints allow and what the HTTP models accept, and every named
query file parses into statements whose parameters are known."""

from __future__ import annotations

import re
import typing

import pytest

from jobsched.adapters.postgres.migrate import migration_files
from jobsched.adapters.postgres.sql import QueryError, load_queries, parse_queries
from jobsched.api.models import JobCreate
from jobsched.domain.states import (
    ACTIVE_EXECUTION_STATES,
    TERMINAL_EXECUTION_STATES,
    AttemptOutcome,
    ExecutionState,
    JobKind,
    JobState,
)


def _check_values(column: str) -> set[str]:
    """The values the newest CHECK constraint on ``column`` allows, across migrations."""
    found: set[str] = set()
    for _, _, sql in migration_files():
        for match in re.finditer(rf"CHECK \({column} IN \(([^)]*)\)\)", sql):
            found = set(re.findall(r"'([a-z_]+)'", match.group(1)))
    return found


@pytest.mark.parametrize(("column", "enum"), [
    ("kind", JobKind), ("state", None), ("outcome", AttemptOutcome)])
def test_the_schema_allows_exactly_the_enum_values(column: str, enum: type | None) -> None:
    if enum is None:  # two tables have a "state": jobs' first, then executions'
        sqls = [sql for _, _, sql in migration_files()]
        states = [set(re.findall(r"'([a-z_]+)'", m.group(1)))
                  for sql in sqls for m in re.finditer(r"CHECK \(state IN \(([^)]*)\)\)", sql)]
        assert states[0] == {s.value for s in JobState}
        assert states[1] == {s.value for s in ExecutionState}
        return
    assert _check_values(column) == {v.value for v in enum}


def test_terminal_and_active_states_partition_the_execution_states() -> None:
    assert ACTIVE_EXECUTION_STATES | TERMINAL_EXECUTION_STATES == set(ExecutionState)
    assert not ACTIVE_EXECUTION_STATES & TERMINAL_EXECUTION_STATES
    assert ExecutionState.DEAD in TERMINAL_EXECUTION_STATES


def test_the_http_model_accepts_exactly_the_job_kinds() -> None:
    kind = typing.get_args(JobCreate.model_fields["kind"].annotation)
    assert set(kind) == {k.value for k in JobKind}


def test_named_parameters_become_positional_once_each() -> None:
    queries = parse_queries("""
-- header comment
-- one --
-- why: the :not_a_param in a comment is left alone
SELECT :a::uuid[], :b, :a -- :c in a trailing comment
WHERE x = '{}'::jsonb
""")
    query = queries["one"]
    assert query.params == ("a", "b")
    assert query.text == "SELECT $1::uuid[], $2, $1\nWHERE x = '{}'::jsonb"
    assert query.args(b=2, a=1) == (1, 2)
    with pytest.raises(QueryError, match="missing"):
        query.args(a=1)
    with pytest.raises(QueryError, match="unexpected"):
        query.args(a=1, b=2, c=3)


def test_a_query_file_with_a_repeated_or_empty_block_is_refused() -> None:
    with pytest.raises(QueryError, match="twice"):
        parse_queries("-- q --\nSELECT 1\n-- q --\nSELECT 2\n")
    with pytest.raises(QueryError, match="empty"):
        parse_queries("-- q --\n-- only a comment\n")
    with pytest.raises(QueryError, match="before the first"):
        parse_queries("SELECT 1\n-- q --\nSELECT 2\n")


def test_a_block_says_how_it_is_planned() -> None:
    queries = parse_queries("""
-- batch --
-- plan: generic (why, in a word)
SELECT * FROM unnest(:ids::uuid[])
-- plain --
-- a plan: generic mention inside a sentence does not count
SELECT 1
""")
    assert queries["batch"].plan == "generic"
    assert queries["plain"].plan is None
    with pytest.raises(QueryError, match="plan"):
        parse_queries("-- q --\n-- plan: fastest\nSELECT 1\n")
    with pytest.raises(QueryError, match="plan"):
        parse_queries("-- q --\n-- plan: generic\n-- plan: generic\nSELECT 1\n")


def test_the_statements_that_join_a_batch_to_executions_run_on_generic_plans() -> None:
    """PostgreSQL's own plans for them compared every row of a day partition with every
    batch row (see sql.py)."""
    planned = {(filename, q.name, q.plan)
               for filename in ("worker.sql", "leader.sql", "workflows.sql")
               for q in load_queries(filename) if q.plan is not None}
    assert planned == {("worker.sql", "claim_executions", "generic"),
                       ("worker.sql", "heartbeat", "generic"),
                       ("worker.sql", "finish_executions", "generic"),
                       ("leader.sql", "mark_published", "generic"),
                       ("worker.sql", "stream_output", "generic"),
                       ("workflows.sql", "record_results", "generic")}


@pytest.mark.parametrize("filename", ["jobs.sql", "leader.sql", "worker.sql", "tokens.sql",
                                      "webhooks.sql", "workflows.sql"])
def test_every_shipped_query_file_loads(filename: str) -> None:
    queries = list(load_queries(filename))
    assert queries
    for query in queries:
        assert "$" not in query.text or query.params, query.name
        assert not re.search(r"(?<![:\w]):[a-z_]", query.text), query.name


def test_the_dashboard_and_the_cli_know_the_same_states() -> None:
    """The dashboard is JavaScript and cannot import the enums: its terminal set is checked
    against them here, as are the CLI's state colours."""
    from pathlib import Path

    from jobsched.cli_client import STATE_COLOURS

    source = (Path(__file__).resolve().parents[2]
              / "jobsched/api/dashboard/static/format.js").read_text()
    match = re.search(r"export const TERMINAL = new Set\(\[([^\]]*)\]\)", source)
    assert match is not None
    assert set(re.findall(r'"([a-z_]+)"', match.group(1))) == {
        s.value for s in TERMINAL_EXECUTION_STATES}
    assert set(STATE_COLOURS) >= {s.value for s in ExecutionState} | {s.value for s in JobState}


def test_migration_versions_are_unique_and_contiguous() -> None:
    versions = [version for version, _, _ in migration_files()]
    assert versions == list(range(1, len(versions) + 1))
