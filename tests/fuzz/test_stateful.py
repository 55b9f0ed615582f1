"""Schemathesis' stateful phase over the served document: sequences of calls that follow
the document's OpenAPI links (create a job, then read, patch, pause, resume, trigger or
cancel it, read its executions, read the execution a trigger made...), each request
checked: no 5xx, and status, content type, headers and body as documented.

Left out, as in tests/e2e/test_openapi.py: use_after_free (DELETE cancels, and a
cancelled job stays readable, as DESIGN.md says) and positive_data_acceptance (cron
syntax and the kind/payload pairing are rules a JSON Schema cannot state).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from schemathesis import checks
from schemathesis.config import SchemathesisConfig

from tests.e2e.conftest import LocalCluster
from tests.fuzz.tally import BUDGET, TALLY

pytestmark = pytest.mark.timeout(max(120, BUDGET * 6))

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.ensure_resource_availability,
]


def test_stateful_walks_along_the_links_find_no_server_error(
    fuzz_cluster: LocalCluster,
) -> None:
    config = SchemathesisConfig.from_dict({
        "base-url": fuzz_cluster.api,
        "auth": {"openapi": {"bearer": {"bearer": fuzz_cluster.token}}},
    })
    schema = schemathesis.openapi.from_url(
        f"{fuzz_cluster.api}/api/v1/openapi.json", config=config,
        headers={"Authorization": f"Bearer {fuzz_cluster.token}"})
    assert schema.statistic.transitions.total >= 8  # the document's links
    failures: list[str] = []
    walks = [0]

    class Walk(schema.as_state_machine()):  # type: ignore[misc]
        def call(self, case: Any, **kwargs: Any) -> Any:
            response = super().call(case, **kwargs)
            TALLY.record(case.method, case.formatted_path, response.status_code,
                         case.operation.label)
            return response

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS,
                                       transport_kwargs=kwargs or None,
                                       recorder=self.recorder)
            except BaseException as exc:  # checks fail as a FailureGroup
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code}: {exc!r}")
                raise

        def teardown(self) -> None:
            walks[0] += 1
            super().teardown()

    # Which rules a walk may take depends on what the api answered before (a bundle of
    # created jobs is empty or not), so Hypothesis, replaying a choice sequence against a
    # server whose state has moved on, can find its draws inconsistent (Flaky). That says
    # nothing about the api: as schemathesis' own runner does, such a run just ends and
    # another starts, until the budget of walks is spent. Check failures are recorded as
    # they happen, so a replay cannot hide one.
    for _ in range(20):
        if walks[0] >= BUDGET:
            break
        try:
            Walk.run(settings=settings(max_examples=BUDGET - walks[0], stateful_step_count=8,
                                       deadline=None, database=None,
                                       suppress_health_check=list(HealthCheck)))
        except Flaky:
            if failures:
                raise
    assert failures == []
    assert TALLY.server_errors == []
    assert walks[0] >= min(BUDGET, 10), walks
