"""The fuzzing tier's budget and its tally of requests and 5xx answers, in a module of its
own: pytest loads conftest.py under another name than ``tests.fuzz.conftest``, so a
counter kept there would be two counters."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: Examples per test: 20 in every run (seconds); ``make fuzz`` sets 1,000.
BUDGET = int(os.environ.get("FUZZ_EXAMPLES", "20"))


@dataclass
class Tally:
    """What the tier sent and what came back 5xx, over the whole session."""

    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    #: (operation, status class) -> count, for the summary: what the fuzzing reached
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, method: str, target: str, status: int, operation: str = "") -> None:
        self.requests += 1
        operation = operation or _ID.sub("{id}", f"{method} {target}")
        self.outcomes[(operation, f"{status // 100}xx")] += 1
        if status >= 500:
            self.server_errors.append(f"{method} {target} -> {status}")

    def reached(self) -> str:
        """Per operation, how many answers of each class, e.g. "POST /api/v1/jobs: 2xx 40"."""
        by_operation: dict[str, list[str]] = {}
        for (operation, status), count in sorted(self.outcomes.items()):
            by_operation.setdefault(operation, []).append(f"{status} {count}")
        return "; ".join(f"{op}: {', '.join(c)}" for op, c in by_operation.items())


TALLY = Tally()
