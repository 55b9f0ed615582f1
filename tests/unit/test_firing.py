"""The leader's decisions for a due job, with the clock passed in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from jobsched.domain.firing import (
    FirePolicy,
    initial_fire_at,
    jitter_offset,
    plan_due_job,
    preview_fires,
)
from jobsched.domain.schedule import parse_schedule

EVERY_SECOND = parse_schedule("* * * * * *")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_on_time_fire_runs_and_advances() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(), s(0), s(0.003))
    assert [(f.scheduled_for, f.state, f.reason) for f in plan.fires] == [(s(0), "queued", None)]
    assert plan.next_fire_at == s(1)


def test_late_within_the_misfire_threshold_is_not_missed() -> None:
    """A leader running 3 s behind (an overloaded machine) runs every fire, whatever the
    policy: only fires later than misfire_threshold_s (5 s) are misfires."""
    for misfire in ("run_once", "run_all", "skip"):
        plan = plan_due_job(EVERY_SECOND, FirePolicy(misfire=misfire), s(0), s(3.2))  # type: ignore[arg-type]
        assert [(f.scheduled_for, f.state, f.reason) for f in plan.fires] == [
            (s(i), "queued", None) for i in range(4)], misfire
    tight = FirePolicy(misfire_threshold_s=1)
    plan = plan_due_job(EVERY_SECOND, tight, s(0), s(3.2))
    assert [(f.scheduled_for, f.state) for f in plan.fires] == [
        (s(0), "queued"), (s(3), "queued")]
    assert plan.fires[0].reason == "coalesced 2 later missed fires (misfire=run_once)"


def test_run_once_coalesces_a_gap() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(), s(0), s(30.5))
    # fires up to 5 s late run; the older ones coalesce into one run
    assert [(f.scheduled_for, f.state) for f in plan.fires] == [
        (s(0), "queued"), *((s(i), "queued") for i in range(26, 31))]
    assert plan.fires[0].reason == "coalesced 25 later missed fires (misfire=run_once)"
    assert plan.next_fire_at == s(31)


def test_run_all_catches_up_to_the_cap_and_records_the_rest() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(misfire="run_all", max_catchup=3), s(0), s(9.2))
    assert [(f.scheduled_for, f.state) for f in plan.fires] == [
        (s(0), "queued"), (s(1), "queued"), (s(2), "queued"), (s(3), "missed"),
        *((s(i), "queued") for i in range(5, 10))]
    assert plan.fires[3].reason == "2 fires beyond max_catchup=3"
    assert plan.next_fire_at == s(10)


def test_skip_runs_only_recent_fires() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(misfire="skip"), s(0), s(10.5))
    states = [(f.scheduled_for, f.state) for f in plan.fires]
    assert states[0] == (s(0), "missed")
    assert plan.fires[0].reason == "6 fires later than 5s not run (misfire=skip)"
    assert states[1:] == [(s(i), "queued") for i in range(6, 11)]


def test_starting_deadline_marks_late_runs_missed() -> None:
    policy = FirePolicy(misfire="run_once", starting_deadline_s=2)
    plan = plan_due_job(EVERY_SECOND, policy, s(0), s(3))
    assert [(f.scheduled_for, f.state) for f in plan.fires] == [
        (s(0), "missed"), (s(1), "queued"), (s(2), "queued"), (s(3), "queued")]
    assert "starting_deadline_s=2" in (plan.fires[0].reason or "")
    assert plan.next_fire_at == s(4)
    on_time = plan_due_job(EVERY_SECOND, policy, s(0), s(1.5))
    assert on_time.fires[0].state == "queued"


def test_a_year_of_downtime_is_bounded_work() -> None:
    year = 365 * 86400
    plan = plan_due_job(EVERY_SECOND, FirePolicy(), s(0), s(year + 0.5))
    assert len(plan.fires) == 1
    assert "more than 999" in (plan.fires[0].reason or "")
    assert plan.next_fire_at == s(year + 1)
    every = parse_schedule("@every 1s")
    plan = plan_due_job(every, FirePolicy(misfire="skip"), s(0), s(year + 0.5))
    assert plan.next_fire_at == s(year + 1)
    assert next(f.state for f in plan.fires) == "missed"


def test_end_at_and_max_runs_end_the_schedule() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(end_at=s(2)), s(2), s(2))
    assert [f.scheduled_for for f in plan.fires] == [s(2)] and plan.next_fire_at is None
    plan = plan_due_job(EVERY_SECOND, FirePolicy(end_at=s(1)), s(2), s(2))
    assert plan.fires == [] and plan.next_fire_at is None
    plan = plan_due_job(EVERY_SECOND, FirePolicy(max_runs=3, run_count=2), s(5), s(5))
    assert plan.runs == 1 and plan.next_fire_at is None
    policy = FirePolicy(misfire="run_all", max_runs=3, run_count=1)
    plan = plan_due_job(EVERY_SECOND, policy, s(0), s(5))
    assert plan.runs == 2 and plan.next_fire_at is None


def test_one_shot_schedules_do_not_continue() -> None:
    plan = plan_due_job(parse_schedule("immediate"), FirePolicy(), s(0), s(0))
    assert [f.state for f in plan.fires] == ["queued"] and plan.next_fire_at is None


def test_jitter_is_deterministic_bounded_and_spreads() -> None:
    ids = [uuid.UUID(int=i) for i in range(1, 200)]
    offsets = [jitter_offset(i, 30) for i in ids]
    assert offsets == [jitter_offset(i, 30) for i in ids]
    assert all(timedelta(0) <= o < timedelta(seconds=30) for o in offsets)
    assert len(set(offsets)) > 150
    assert jitter_offset(ids[0], 0) == timedelta(0)


def test_jitter_shifts_fires_but_keeps_the_grid() -> None:
    hourly = parse_schedule("0 * * * *")
    offset = timedelta(seconds=17)
    first = initial_fire_at(hourly, T0 + timedelta(minutes=1), offset=offset)
    assert first == T0 + timedelta(hours=1, seconds=17)
    plan = plan_due_job(hourly, FirePolicy(offset=offset), first, first)
    assert plan.next_fire_at == T0 + timedelta(hours=2, seconds=17)


def test_initial_fire_respects_bounds() -> None:
    daily = parse_schedule("0 9 * * *")
    assert initial_fire_at(daily, T0, start_at=s(86400 * 3)) == datetime(2026, 3, 5, 9, tzinfo=UTC)
    assert initial_fire_at(daily, T0, end_at=s(60)) is None


def test_preview_lists_the_next_fires() -> None:
    berlin = parse_schedule("30 2 * * *", "Europe/Berlin")
    fires = preview_fires(berlin, datetime(2026, 3, 28, tzinfo=UTC), 3)
    assert fires == [datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
                     datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # spring forward: end of gap
                     datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    assert preview_fires(parse_schedule("immediate"), T0, 5) == [T0]


def test_a_horizon_fires_ahead_without_counting_lateness() -> None:
    plan = plan_due_job(EVERY_SECOND, FirePolicy(starting_deadline_s=0.1), s(1), s(0.6),
                        horizon=s(1.1))
    assert [(f.scheduled_for, f.state) for f in plan.fires] == [(s(1), "queued")]
    assert plan.next_fire_at == s(2)
    nothing = plan_due_job(EVERY_SECOND, FirePolicy(), s(2), s(0.6), horizon=s(1.1))
    assert nothing.fires == [] and nothing.next_fire_at == s(2)
