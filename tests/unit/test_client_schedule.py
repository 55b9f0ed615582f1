"""``Client.schedule()`` refuses what no worker can run, before sending anything."""

from __future__ import annotations

from typing import Any

import pytest

from jobsched import Client, task
from jobsched.client import task_name


def _script_function(name: str | None = None) -> Any:
    def send_report(team: str) -> None: ...

    send_report.__module__ = "__main__"  # as if defined in `python script.py`
    return task(name=name)(send_report) if name else task(send_report)


async def test_schedule_refuses_a_task_of_the_main_script() -> None:
    # A port nothing listens on: the refusal must come before any request.
    async with Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match=r"__main__.*import it from there.*--import"):
            await client.schedule(_script_function(), cron="0 9 * * *")


def test_a_main_script_task_with_a_module_name_is_accepted() -> None:
    named = _script_function("myapp.tasks:send_report")
    assert task_name(named) == "myapp.tasks:send_report"


def test_a_module_task_is_accepted() -> None:
    @task
    def local() -> None: ...

    assert task_name(local) == f"{__name__}:{local.__qualname__}"
