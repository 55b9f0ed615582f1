"""Tasks the examples in README.md and docs/ schedule.

A worker runs them when started from the checkout root with
``jobsched run --role worker --import examples.tasks`` (or ``--role all``); the scheduling
code imports them from here too, so both sides know them as ``examples.tasks:NAME``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jobsched import task


@task
def send_report(team: str) -> dict[str, str]:
    """docs/client.md's task."""
    return {"sent": team}


@task
def report(team: str, count: int = 1) -> dict[str, object]:
    """The task of the README's and docs/cli.md's command-line session."""
    return {"team": team, "count": count}


@task
def hello() -> str:
    """The demo job of ``make run``: says when it ran."""
    return f"hello from jobsched at {datetime.now(UTC):%H:%M:%S}"
