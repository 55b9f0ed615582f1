"""The served OpenAPI document against the api that serves it (schemathesis): for a
bounded number of generated requests per operation, valid and invalid, no response is a
server error and every response conforms to the document (status, content type,
headers, body schema), and no /api/ route answers without a token.

Driven through schemathesis' public Hypothesis API (``APIOperation.as_strategy`` with
``@given``), one pytest subtest per operation and generation mode, not through
``schemathesis.pytest.from_fixture``: that integration renames pytest's node through the
private ``Node._nodeid``, which pytest 9.2 removed (``AttributeError: 'Function' object has
no attribute '_nodeid'``). What it ran besides, its deterministic "coverage" phase, has no
public API; the fuzzing budget per operation is doubled instead (positive and negative
each get EXAMPLES_PER_MODE).

Not checked, on purpose: positive_data_acceptance (a schedule's cron syntax or the
kind/payload pairing are rules a JSON Schema cannot state, so schema-valid bodies may
rightly be 422) and use_after_free (DELETE cancels: the job stays readable, as
DESIGN.md specifies).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from schemathesis import GenerationMode, checks
from schemathesis.config import SchemathesisConfig

from jobsched.crypto import new_key
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown

pytestmark = pytest.mark.timeout(120)

EXAMPLES_PER_MODE = 40
HTTP_LINE_LIMIT = 8190  # aiohttp's max_line_size and max_field_size
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.missing_required_header,
    checks.ignored_auth,
]
CASES: Counter[str] = Counter()
FAILED: Counter[str] = Counter()


def _post(url: str, token: str, body: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def openapi_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                    template_db: str) -> Iterator[LocalCluster]:
    """An api alone, so nothing the fuzzer creates ever runs; no rate limits, so that
    every generated request reaches the handlers (and a probe with a bad token gets its
    401, not the 429 of too many failed authentications)."""
    cluster = _new_cluster(tmp_path_factory.mktemp("openapi"), zookeeper, template_db)
    # A secrets key: webhook endpoints can be created, and their routes fuzzed past 403.
    cluster.start("api", JOBSCHED_RATE_LIMIT_PER_S="0", JOBSCHED_AUTH_FAILURES_PER_S="0",
                  JOBSCHED_SECRETS_KEY=new_key())
    yield cluster
    _teardown(cluster)
    busiest = ", ".join(f"{op}: {n}" for op, n in CASES.most_common(14))
    print(f"\nschemathesis: {sum(CASES.values())} cases, {FAILED['cases']} failed ({busiest})")


@pytest.fixture(scope="module")
def known_ids(openapi_cluster: LocalCluster) -> dict[str, str]:
    """A real job and execution, so that {id} routes are reached beyond their 404."""
    job = _post(openapi_cluster.api + "/api/v1/jobs", openapi_cluster.token, {
        "name": "fuzz-target", "schedule": "0 0 1 1 *", "kind": "python",
        "python": {"function": "sample_tasks:noop"}})
    execution = _post(f"{openapi_cluster.api}/api/v1/jobs/{job['id']}/trigger",
                      openapi_cluster.token, None)
    return {"job": job["id"], "execution": execution["id"]}


@pytest.fixture(scope="module")
def api_schema(openapi_cluster: LocalCluster) -> Any:
    """The document as served; requests carry the token through the document's own
    security scheme, so schemathesis can also leave it out (and expect a 401)."""
    config = SchemathesisConfig.from_dict({
        "base-url": openapi_cluster.api,
        "auth": {"openapi": {"bearer": {"bearer": openapi_cluster.token}}},
        # a schema-violating body can be rejected for its size (413) or its headers (431)
        "checks": {"negative_data_rejection": {"expected-statuses": [
            400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, 431]}},
    })
    return schemathesis.openapi.from_url(
        f"{openapi_cluster.api}/api/v1/openapi.json", config=config,
        headers={"Authorization": f"Bearer {openapi_cluster.token}"})


def test_api_conforms_to_its_openapi_document(
    api_schema: Any, known_ids: dict[str, str], subtests: pytest.Subtests
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"POST /api/v1/jobs", "PATCH /api/v1/jobs/{id}"} <= {op.label for op in operations}
    for operation in operations:
        for mode in _modes(operation):
            with subtests.test(msg=f"{operation.label} {mode.value}"):
                _fuzz(operation, mode, known_ids)


def _modes(operation: Any) -> list[GenerationMode]:
    """Negative data needs something to break: an operation without parameters or body
    (GET /healthz) has no invalid request, and Hypothesis would find it unsatisfiable."""
    inputs = (operation.path_parameters, operation.query, operation.headers,
              operation.cookies, operation.body)
    if any(len(part) for part in inputs):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def _fuzz(operation: Any, mode: GenerationMode, known_ids: dict[str, str]) -> None:
    # database=None: every operation shares this inner function's name, so a stored
    # failing example of one would be replayed against the others.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    def conforms(case: Any) -> None:
        if not _within_http_line_limits(case):
            reject()
        path_id = str((case.path_parameters or {}).get("id"))
        if _is_uuid(path_id) and sum(map(ord, path_id)) % 2 == 0:
            # half the valid ids become real ones; an invalid id stays, to be rejected
            kind = "execution" if case.path.startswith("/api/v1/executions") else "job"
            case.path_parameters["id"] = known_ids[kind]
        CASES[f"{case.method} {case.path}"] += 1
        try:
            case.call_and_validate(checks=CHECKS, timeout=10)
        except BaseException:  # checks fail as a FailureGroup, not an Exception
            FAILED["cases"] += 1
            raise

    conforms()


def _within_http_line_limits(case: Any) -> bool:
    """Whether the request line and every header line fit aiohttp's limit. Longer ones are
    refused by its HTTP parser itself (400, text/plain "Got more than 8190 bytes"), before
    the application and its document are involved; newer Hypothesis versions generate
    such query strings (a 9 KB negative ``cursor``)."""
    sent = case.as_transport_kwargs(base_url="http://api")
    try:
        request = requests.Request(sent["method"], sent["url"], params=sent.get("params"),
                                   headers=sent.get("headers")).prepare()
    except (ValueError, TypeError, requests.RequestException):
        return True  # not preparable here: let the call itself show what happens
    lines = [f"{request.method} {request.path_url} HTTP/1.1",
             *(f"{name}: {value}" for name, value in request.headers.items())]
    return all(len(line.encode("utf-8", "surrogatepass")) <= HTTP_LINE_LIMIT
               for line in lines)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def test_the_document_covers_every_route(openapi_cluster: LocalCluster) -> None:
    request = urllib.request.Request(
        openapi_cluster.api + "/api/v1/openapi.json",
        headers={"Authorization": f"Bearer {openapi_cluster.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        document = json.loads(response.read())
    assert document["openapi"] == "3.1.0"
    operations = {f"{m.upper()} {p}" for p, ms in document["paths"].items() for m in ms}
    assert {"POST /api/v1/jobs", "GET /api/v1/jobs", "GET /api/v1/jobs/{id}",
            "PATCH /api/v1/jobs/{id}", "DELETE /api/v1/jobs/{id}",
            "POST /api/v1/jobs/{id}/pause", "POST /api/v1/jobs/{id}/resume",
            "POST /api/v1/jobs/{id}/trigger", "GET /api/v1/jobs/{id}/executions",
            "GET /api/v1/executions/{id}", "GET /api/v1/cluster",
            "POST /api/v1/schedules/preview", "GET /api/v1/openapi.json",
            "GET /healthz", "GET /readyz"} <= operations
    # every $ref points at a schema the document has
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in document["components"]["schemas"], name
