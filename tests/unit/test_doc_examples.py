"""The tasks the docs schedule exist in ``examples/``, which a user's worker can import
(``tests/e2e/sample_tasks.py`` is the tests' own, not theirs)."""

from __future__ import annotations

import re

import examples.tasks
from jobsched.tasks import registry
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_docs_schedule_no_test_task() -> None:
    for path in DOCS:
        assert "sample_tasks" not in path.read_text(), f"{path.name} names a test-only task"


def test_every_example_task_the_docs_name_is_registered() -> None:
    named = {m for path in DOCS
             for m in re.findall(r"examples\.tasks:(\w+)", path.read_text())}
    assert named, "the docs name no example task"
    for name in named:
        function = getattr(examples.tasks, name, None)
        assert function is not None, f"examples.tasks has no {name}"
        assert registry.get(f"examples.tasks:{name}") is function
