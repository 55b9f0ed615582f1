"""The state machines of jobs, executions and attempts: one enum each, and the sets the
rest of the code asks about ("is this execution over?"), defined once.

The values are the strings stored in PostgreSQL (whose CHECK constraints list the same
values; a unit test keeps the two in step) and shown by the API, the CLI and the dashboard.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


#: Jobs that may still fire (they count against a namespace's quota).
LIVE_JOB_STATES = frozenset({JobState.ACTIVE, JobState.PAUSED})


class ExecutionState(StrEnum):
    """``queued → running → succeeded``, or ``→ retrying → queued`` (attempt + 1), or
    ``→ dead`` after the last attempt. ``failed`` ends an execution whose run could not be
    tried at all (its job lock was not obtained for concurrency=replace); ``missed`` and
    ``skipped`` are fires recorded without a run, with a reason."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    DEAD = "dead"
    SKIPPED = "skipped"
    MISSED = "missed"


#: Executions not yet over: a worker or the leader still has something to do with them.
ACTIVE_EXECUTION_STATES = frozenset(
    {ExecutionState.QUEUED, ExecutionState.RUNNING, ExecutionState.RETRYING})
#: Executions that are over: nothing will change them again (but a re-drive of a dead one).
TERMINAL_EXECUTION_STATES = frozenset(set(ExecutionState) - ACTIVE_EXECUTION_STATES)


class AttemptOutcome(StrEnum):
    """How one try of an execution ended (``attempts.outcome``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"  # taken away (job cancelled, replaced) or handed back
    LOST = "lost"  # its worker stopped renewing the lease
    MISSED = "missed"  # not started: past the job's starting deadline
    SKIPPED = "skipped"  # not started: another run holds the job's lock (forbid)


class JobKind(StrEnum):
    SHELL = "shell"
    HTTP = "http"
    PYTHON = "python"
