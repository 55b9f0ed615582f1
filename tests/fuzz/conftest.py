"""The fuzzing tier: generated requests against a real api process, counted.

Budget: ``FUZZ_EXAMPLES`` examples per test (default 20: seconds, in every ``make test``
and CI run); ``make fuzz`` runs the same tests at 1,000 by hand. Every response is
tallied; the run ends with one line, ``fuzz: N requests sent, M answered 5xx``, and a test
fails on any 5xx. docs/security.md records the counts of the runs made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.fuzz.tally import BUDGET, TALLY


@pytest.fixture(scope="session")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                 template_db: str) -> Iterator[LocalCluster]:
    """An api alone, so nothing the fuzzer creates ever runs (it may create shell jobs);
    no rate limits, so every generated request reaches the handlers."""
    cluster = _new_cluster(tmp_path_factory.mktemp("fuzz"), zookeeper, template_db)
    cluster.start("api", JOBSCHED_RATE_LIMIT_PER_S="0", JOBSCHED_AUTH_FAILURES_PER_S="0")
    yield cluster
    _teardown(cluster)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLY.requests:
        terminalreporter.write_line(
            f"fuzz: {TALLY.requests} requests sent, {len(TALLY.server_errors)} answered 5xx "
            f"(FUZZ_EXAMPLES={BUDGET})")
        terminalreporter.write_line(f"  {TALLY.reached()}")
        for line in TALLY.server_errors[:20]:
            terminalreporter.write_line(f"  {line}")
