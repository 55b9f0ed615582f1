"""Tasks the examples in README.md and docs/ schedule.

A worker runs them when started from the checkout root with
``jobsched run --role worker --import examples.tasks`` (or ``--role all``); the scheduling
code imports them from here too, so both sides know them as ``examples.tasks:NAME``.
"""

from __future__ import annotations

from jobsched import task


@task
def send_report(team: str) -> dict[str, str]:
    """docs/client.md's task."""
    return {"sent": team}
