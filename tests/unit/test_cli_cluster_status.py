"""How ``cluster status`` shows the API's queue depths."""

from __future__ import annotations

from jobsched.cli_client import queue_depths


def test_priority_bands_are_shown_after_their_total_not_as_a_dict() -> None:
    queues = {"executions": 3, "by_priority": {"high": 0, "normal": 3, "low": 0}, "dead": 1}
    assert queue_depths(queues) == "executions 3 (high 0, normal 3, low 0), dead 1"


def test_flat_and_empty_depths() -> None:
    assert queue_depths({"executions": 0, "dead": 0}) == "executions 0, dead 0"
    assert queue_depths({}) == "-"


def test_runs_are_shown_not_rabbitmq_messages() -> None:
    queues = {"executions": 250, "by_priority": {"high": 10, "normal": 240, "low": 0},
              "messages": {"high": 1, "normal": 3, "low": 0}, "dead": 0}
    assert queue_depths(queues) == "executions 250 (high 10, normal 240, low 0), dead 0"
