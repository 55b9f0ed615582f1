"""What the leader does with a job that has fallen due: a pure function of
``(schedule, policy, next_fire_at, now)``.

Misfire policies (applied alike after downtime, a leader take-over, a resume and a backlog):

A fire late by no more than ``misfire_threshold_s`` (the scheduler setting, 5 s by default,
like Quartz's misfireThreshold) is not a misfire: it runs. Older fires are misfires, and
the job's policy decides them:

* ``run_once`` (default): every missed fire coalesces into one run, recorded at the first
  missed fire time, its reason naming how many later fires it absorbed.
* ``run_all``: each missed fire runs, the first ``max_catchup`` of them; the rest are
  recorded as one ``missed`` execution (at the first dropped time) naming the count.
* ``skip``: missed fires are recorded as one ``missed`` execution naming the count.

``starting_deadline_s``, when set, bounds every fire: one chosen to run that is already
later than it is recorded ``missed`` instead. Nothing is ever dropped silently and the
schedule always moves on to its first fire after ``now``: never a wedged job.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from jobsched.domain.schedule import (
    Schedule,
    ScheduleError,
    coalesce_next_fire,
    first_fire_at,
    next_fire_after,
    parse_schedule,
)
from jobsched.domain.states import ExecutionState

log = logging.getLogger(__name__)

Misfire = Literal["run_once", "run_all", "skip"]
FireState = Literal["queued", "missed", "skipped"]

#: How late a fire may be and still count as on time (the reference design's ±5 s).
DEFAULT_MISFIRE_THRESHOLD_S = 5.0
#: How many due fires are enumerated one by one; the rest are counted as "more than".
ENUMERATION_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class FirePolicy:
    misfire: Misfire = "run_once"
    max_catchup: int = 10
    starting_deadline_s: float | None = None
    end_at: datetime | None = None
    max_runs: int | None = None
    run_count: int = 0
    offset: timedelta = timedelta(0)  # the job's deterministic jitter
    #: How late a fire may be and still run as a normal fire; older ones are misfires,
    #: decided by ``misfire``. ``starting_deadline_s``, when set, is the tighter bound.
    misfire_threshold_s: float = DEFAULT_MISFIRE_THRESHOLD_S


@dataclass(frozen=True, slots=True)
class PlannedFire:
    scheduled_for: datetime
    state: FireState
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FirePlan:
    fires: list[PlannedFire]
    next_fire_at: datetime | None

    @property
    def runs(self) -> int:
        return sum(1 for f in self.fires if f.state == "queued")


def jitter_offset(job_id: uuid.UUID, jitter_s: float) -> timedelta:
    """A per-job offset in ``[0, jitter_s)``, stable across restarts and leaders (a hash of
    the id, like Jenkins' ``H``), so that many jobs on one schedule do not fire at once."""
    if jitter_s <= 0:
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(job_id.bytes).digest()[:8], "big")
    millis = digest % max(1, int(jitter_s * 1000))
    return timedelta(milliseconds=millis)


def _count(n: int, more: bool) -> str:
    return f"more than {n}" if more else str(n)


def plan_due_job(
    schedule: Schedule,
    policy: FirePolicy,
    next_fire_at: datetime,
    now: datetime,
    horizon: datetime | None = None,
) -> FirePlan:
    """The executions to record for a due job and its following ``next_fire_at``.

    Fires up to ``horizon`` (default ``now``) count as due: the leader fires a little
    ahead and the worker holds the run until its time. Lateness is measured at ``now``.
    """
    horizon = now if horizon is None or horizon < now else horizon
    offset = policy.offset
    due: list[datetime] = []
    nominal: datetime | None = next_fire_at - offset
    more = False
    while nominal is not None and nominal + offset <= horizon:
        if policy.end_at is not None and nominal + offset > policy.end_at:
            break
        if len(due) == ENUMERATION_LIMIT:
            more = True
            break
        due.append(nominal + offset)
        nominal = next_fire_after(schedule, nominal)

    fires: list[PlannedFire] = []
    if due:
        fires = _apply_misfire(policy, due, more, now)
    fires = _apply_max_runs(policy, fires)

    following = None
    if due:
        following_nominal = coalesce_next_fire(schedule, due[-1] - offset, horizon - offset)
        following = following_nominal + offset if following_nominal is not None else None
    else:  # not due yet (the caller selected it early): leave it as it is
        following = next_fire_at
    if following is not None and policy.end_at is not None and following > policy.end_at:
        following = None
    runs = sum(1 for f in fires if f.state == "queued")
    if policy.max_runs is not None and policy.run_count + runs >= policy.max_runs:
        following = None
    return FirePlan(fires, following)


def _apply_misfire(
    policy: FirePolicy, due: list[datetime], more: bool, now: datetime
) -> list[PlannedFire]:
    """Fires late by no more than ``misfire_threshold_s`` are not missed: each runs, as
    Quartz's misfireThreshold has it (a leader running a little behind under load must not
    drop fires). Only the older ones are misfires, and the job's policy decides them."""
    threshold = timedelta(seconds=policy.misfire_threshold_s)
    deadline = (
        timedelta(seconds=policy.starting_deadline_s)
        if policy.starting_deadline_s is not None
        else None
    )
    late = [at for at in due if now - at > threshold]
    on_time = [at for at in due if now - at <= threshold]
    fires: list[PlannedFire] = []
    if late and policy.misfire == "run_once":
        absorbed = len(late) - 1
        reason = (
            f"coalesced {_count(absorbed, more)} later missed fires (misfire=run_once)"
            if absorbed or more
            else None
        )
        fires.append(PlannedFire(late[0], "queued", reason))
    elif late and policy.misfire == "run_all":
        keep = late[: policy.max_catchup]
        dropped = late[policy.max_catchup :]
        fires.extend(PlannedFire(at, "queued") for at in keep)
        if dropped:
            fires.append(PlannedFire(
                dropped[0], "missed",
                f"{_count(len(dropped), more)} fires beyond max_catchup={policy.max_catchup}",
            ))
    elif late:  # skip
        fires.append(PlannedFire(
            late[0], "missed",
            f"{_count(len(late), more)} fires later than {threshold.total_seconds():g}s "
            "not run (misfire=skip)",
        ))
    fires.extend(PlannedFire(at, "queued") for at in on_time)
    if deadline is not None:
        fires = [
            PlannedFire(f.scheduled_for, "missed",
                        f"could not start within starting_deadline_s="
                        f"{policy.starting_deadline_s:g}")
            if f.state == "queued" and now - f.scheduled_for > deadline
            else f
            for f in fires
        ]
    return fires


def _apply_max_runs(policy: FirePolicy, fires: list[PlannedFire]) -> list[PlannedFire]:
    if policy.max_runs is None:
        return fires
    allowed = max(0, policy.max_runs - policy.run_count)
    kept: list[PlannedFire] = []
    for fire in fires:
        if fire.state == "queued":
            if allowed == 0:
                continue
            allowed -= 1
        kept.append(fire)
    return kept


def initial_fire_at(
    schedule: Schedule,
    now: datetime,
    *,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    offset: timedelta = timedelta(0),
) -> datetime | None:
    """The first fire of a job created, resumed or rescheduled at ``now``: never before
    ``start_at``, ``None`` when it would fall after ``end_at``."""
    start = max(now, start_at) if start_at is not None else now
    try:
        first = first_fire_at(schedule, start)
        if first is None:
            return None
        if schedule.is_recurring:
            first += offset
    except OverflowError:  # past the end of year 9999: there is no such fire
        return None
    if end_at is not None and first > end_at:
        return None
    return first


def preview_fires(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times from ``start`` (what ``next_fire_at`` will be); fewer
    when the schedule ends, or reaches the end of year 9999."""
    fires: list[datetime] = []
    try:
        fire = first_fire_at(schedule, start)
        while fire is not None and len(fires) < count:
            fires.append(fire)
            fire = next_fire_after(schedule, fire)
    except OverflowError:
        pass
    return fires


# --- a leader tick: every due job of a batch ---------------------------------------------

FORBID_REASON = "previous run still active (concurrency=forbid)"


@dataclass(frozen=True, slots=True)
class DueJob:
    """A job the leader selected because it is due (or due within its lookahead)."""

    id: uuid.UUID
    schedule: str
    timezone: str
    next_fire_at: datetime
    misfire: str = "run_once"
    max_catchup: int = 10
    starting_deadline_s: float | None = None
    concurrency: str = "allow"
    end_at: datetime | None = None
    max_runs: int | None = None
    run_count: int = 0
    jitter_s: float = 0.0
    kind: str = "python"
    priority: int = 1  # Priority.rank
    busy: bool = False  # a run of this forbid/replace job is still active


@dataclass(frozen=True, slots=True)
class FireRecord:
    """One row the leader writes: an execution to run (queued) or a recorded non-run."""

    job_id: uuid.UUID
    scheduled_for: datetime
    state: ExecutionState = ExecutionState.QUEUED
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobAdvance:
    job_id: uuid.UUID
    next_fire_at: datetime | None
    runs: int


@dataclass
class TickPlan:
    fires: list[FireRecord] = field(default_factory=list)
    advances: list[JobAdvance] = field(default_factory=list)
    replace: list[uuid.UUID] = field(default_factory=list)  # concurrency=replace gives way


def plan_tick(jobs: list[DueJob], now: datetime, horizon: datetime | None = None,
              misfire_threshold_s: float = DEFAULT_MISFIRE_THRESHOLD_S) -> TickPlan:
    """The rows to write for a batch of due jobs: each job's policies applied. A job whose
    stored schedule no longer parses is recorded missed once and fires no more (it never
    wedges the batch)."""
    tick = TickPlan()
    for job in jobs:
        try:
            schedule = parse_schedule(job.schedule, job.timezone, job.id.bytes)
            policy = FirePolicy(
                misfire=job.misfire,  # type: ignore[arg-type]
                max_catchup=job.max_catchup,
                starting_deadline_s=job.starting_deadline_s,
                end_at=job.end_at,
                max_runs=job.max_runs,
                run_count=job.run_count,
                offset=jitter_offset(job.id, job.jitter_s) if schedule.is_recurring
                else timedelta(0),
                misfire_threshold_s=misfire_threshold_s,
            )
            plan = plan_due_job(schedule, policy, job.next_fire_at, now,
                                horizon if job.concurrency == "allow" else None)
        except (ScheduleError, ValueError) as exc:
            log.error("job %s has an unusable schedule (%s); firing it no more", job.id, exc)
            tick.fires.append(FireRecord(job.id, job.next_fire_at, ExecutionState.MISSED,
                                         f"unusable schedule: {exc}"))
            tick.advances.append(JobAdvance(job.id, None, 0))
            continue
        runs = plan.runs
        for fire in plan.fires:
            state = ExecutionState(fire.state)
            if state == ExecutionState.QUEUED and job.busy and job.concurrency == "forbid":
                tick.fires.append(FireRecord(job.id, fire.scheduled_for,
                                             ExecutionState.SKIPPED, FORBID_REASON))
                runs -= 1
            else:
                tick.fires.append(FireRecord(job.id, fire.scheduled_for, state, fire.reason))
        if job.busy and job.concurrency == "replace" and runs:
            tick.replace.append(job.id)
        tick.advances.append(JobAdvance(job.id, plan.next_fire_at, runs))
    return tick


# --- resume ------------------------------------------------------------------------------


def plan_resume(job: Any, now: datetime) -> tuple[datetime | None, list[tuple[datetime, str]]]:
    """Next fire of a resumed job (a row with its schedule columns), and the skipped fire to
    record (misfire=skip). With run_once or run_all the missed fires stay due and the
    leader applies the policy, as after downtime."""
    pending = job["next_fire_at"]
    if pending is None or pending > now or job["misfire"] != "skip":
        return pending, []
    schedule = parse_schedule(job["schedule"], job["timezone"], job["id"].bytes)
    if not schedule.is_recurring:
        return None, [(pending, "skipped while paused (misfire=skip)")]
    offset = jitter_offset(job["id"], job["jitter_s"])
    missed, nominal = 0, pending - offset
    while nominal is not None and nominal + offset <= now and missed <= ENUMERATION_LIMIT:
        missed += 1
        nominal = next_fire_after(schedule, nominal)
    count = _count(ENUMERATION_LIMIT, True) if missed > ENUMERATION_LIMIT else str(missed)
    following = initial_fire_at(schedule, now, start_at=job["start_at"], end_at=job["end_at"],
                                offset=offset)
    return following, [(pending, f"{count} fires skipped while paused (misfire=skip)")]
