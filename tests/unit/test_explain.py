"""The next fire of a job and why, and which executions an explanation lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobsched.domain.explain import is_notable, next_fire, summary

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def job(**overrides: Any) -> dict[str, Any]:
    row = {"id": uuid.uuid4(), "state": "active", "schedule": "0 9 * * *", "timezone": "UTC",
           "next_fire_at": NOW + timedelta(hours=1), "updated_at": NOW - timedelta(hours=2),
           "max_runs": None, "run_count": 0, "start_at": None, "end_at": None, "priority": 1}
    row.update(overrides)
    return row


def test_an_active_job_is_due_at_its_next_fire() -> None:
    fire = next_fire(job(), NOW)
    assert (fire.at, fire.reason) == (NOW + timedelta(hours=1), "due")


def test_a_fire_long_past_is_overdue() -> None:
    fire = next_fire(job(next_fire_at=NOW - timedelta(minutes=1)), NOW)
    assert fire.reason == "overdue" and "scheduler" in fire.detail


def test_a_first_fire_at_start_at_is_said() -> None:
    start = NOW + timedelta(days=3)
    assert next_fire(job(start_at=start, next_fire_at=start), NOW).reason \
        == "waiting_for_start_at"


def test_a_paused_job_has_no_next_fire_even_with_one_pending() -> None:
    fire = next_fire(job(state="paused"), NOW)
    assert (fire.at, fire.reason) == (None, "paused")
    assert "2026-12-02 10:00:00 UTC" in fire.detail


def test_why_a_job_fires_no_more() -> None:
    ended = {"next_fire_at": None, "state": "completed"}
    assert next_fire(job(**ended, max_runs=3, run_count=3), NOW).reason == "max_runs_reached"
    assert next_fire(job(**ended, end_at=NOW - timedelta(days=1)), NOW).reason \
        == "end_at_passed"
    assert next_fire(job(**ended, schedule="immediate"), NOW).reason == "one_shot_fired"
    assert next_fire(job(state="cancelled", next_fire_at=None), NOW).reason == "cancelled"
    waiting = next_fire(job(next_fire_at=None, schedule="immediate"), NOW)
    assert waiting.reason == "one_shot_fired" and "completes when" in waiting.detail


def test_notable_executions() -> None:
    assert is_notable({"state": "missed", "reason": "3 fires not run (misfire=skip)"})
    assert is_notable({"state": "dead", "reason": None})
    assert is_notable({"state": "succeeded", "reason": "coalesced 2 later missed fires"})
    assert not is_notable({"state": "succeeded", "reason": None})
    assert not is_notable({"state": "succeeded", "reason": "triggered"})
    assert is_notable({"state": "dead", "reason": "triggered"})


def test_the_summary_warns_of_no_worker_and_names_the_latest_reason() -> None:
    row = job()
    recent = [{"state": "skipped", "reason": "previous run still active"}]
    text = summary(row, next_fire(row, NOW), 0, 4, recent)
    assert text == ("active: next fire at 2026-12-02 13:00:00 UTC; no worker is alive: runs "
                    "will wait in the queue; 4 run(s) waiting in the normal queue; latest "
                    "notable run skipped: previous run still active")
    assert "worker" not in summary(row, next_fire(row, NOW), 2, 0, [])
