"""Why a job did or did not run, and when it runs next: a pure function of the job's row
and the time (``GET /api/v1/jobs/{id}/explain``, ``jobsched jobs explain``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from jobsched.domain.priority import Priority
from jobsched.domain.schedule import ScheduleError, parse_schedule
from jobsched.domain.states import ExecutionState, JobState

NextFireReason = Literal[
    "due",  # active: fires at next_fire_at
    "overdue",  # active, next_fire_at is past: waiting for a leader to fire it
    "waiting_for_start_at",  # active, its first fire is start_at's
    "paused",
    "cancelled",
    "max_runs_reached",
    "end_at_passed",
    "one_shot_fired",
    "completed",  # no further fire for another reason (e.g. an unusable schedule)
]

#: Execution states that are a fire not run, or a run that gave up: always worth showing.
NOTABLE_STATES = frozenset({ExecutionState.MISSED, ExecutionState.SKIPPED,
                            ExecutionState.DEAD, ExecutionState.FAILED})
#: The reason of a run a person asked for: as planned, not worth showing by itself.
TRIGGERED = "triggered"
#: A fire later than this (seconds) and still not fired reads as "overdue".
OVERDUE_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class NextFire:
    at: datetime | None
    reason: NextFireReason
    detail: str


def _show(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _recurring(job: Any) -> bool:
    try:
        return parse_schedule(job["schedule"], job["timezone"], job["id"].bytes).is_recurring
    except (ScheduleError, ValueError):
        return True


def next_fire(job: Any, now: datetime) -> NextFire:
    """When the job fires next and why (or why it never does again)."""
    state = job["state"]
    pending: datetime | None = job["next_fire_at"]
    if state == JobState.PAUSED:
        since = _show(job["updated_at"])
        return NextFire(None, "paused", f"paused (last changed {since}); it fires again "
                                        "only once resumed")
    if state == JobState.CANCELLED:
        return NextFire(None, "cancelled", "cancelled: it never fires again")
    max_runs, runs = job.get("max_runs"), job.get("run_count", 0)
    if state == JobState.ACTIVE and pending is not None:
        start_at = job.get("start_at")
        if start_at is not None and pending <= start_at and job.get("run_count", 0) == 0 \
                and pending > now:
            return NextFire(pending, "waiting_for_start_at",
                            f"not before start_at: first fire at {_show(pending)}")
        late = (now - pending).total_seconds()
        if late > OVERDUE_AFTER_S:
            return NextFire(pending, "overdue",
                            f"due since {_show(pending)} ({late:.0f}s ago) but not fired "
                            "yet: is a scheduler leader running?")
        return NextFire(pending, "due", f"active: next fire at {_show(pending)}")
    ending = ("; it completes when its last run ends" if state == JobState.ACTIVE
              else "")
    if max_runs is not None and runs >= max_runs:
        return NextFire(None, "max_runs_reached",
                        f"ran {runs} of max_runs={max_runs}: it fires no more{ending}")
    end_at = job.get("end_at")
    if end_at is not None and end_at <= now:
        return NextFire(None, "end_at_passed",
                        f"past end_at {_show(end_at)}: it fires no more{ending}")
    if not _recurring(job):
        return NextFire(None, "one_shot_fired",
                        f"a one-shot job ({job['schedule']}) that has fired{ending}")
    return NextFire(None, "completed", f"no further fire{ending or ': completed'}")


def is_notable(execution: Any) -> bool:
    """A fire not run as planned: missed, skipped, dead or failed, or one with a reason
    (a run that coalesced missed fires, a retry by hand, a cancel) other than
    ``triggered``."""
    reason = execution.get("reason")
    return execution["state"] in NOTABLE_STATES or bool(reason and reason != TRIGGERED)


def why_not(execution: Any) -> str:
    """What to show of an execution that did not go as planned: its reason, or its error
    when it has no reason but ``triggered``."""
    reason = execution.get("reason")
    if reason and reason != TRIGGERED:
        return str(reason)
    return str(execution.get("error") or reason or "")


def summary(job: Any, fire: NextFire, workers: int | None, depth: int | None,
            recent: list[Any]) -> str:
    """One line a person reads first."""
    parts = [fire.detail]
    live = job["state"] in (JobState.ACTIVE, JobState.PAUSED)
    if live or depth:
        if workers == 0:
            parts.append("no worker is alive: runs will wait in the queue")
        elif workers is None:
            parts.append("worker liveness unknown")
    if depth:
        parts.append(f"{depth} run(s) waiting in the {job_band(job)} queue")
    if recent:
        latest = recent[0]
        why = why_not(latest)
        parts.append(f"latest notable run {latest['state']}"
                     + (f": {why}" if why else ""))
    return "; ".join(parts)


def job_band(job: Any) -> str:
    value = job.get("priority", 1)
    return Priority.from_rank(value).value if isinstance(value, int) else str(value)
