"""Hypothesis against a real api at the places the issue found 500s: cursors (anything
from random text to well-formed ones naming impossible positions), times at the
calendar's edges (the first and last days of years 1 and 9999, with every offset, as a
job's bounds, an "at" schedule or a preview's start) and JSON nested from 1 to 5,000
levels in every body that takes JSON. Every answer must be 2xx or a 4xx problem+json."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import LocalCluster
from tests.fuzz.tally import BUDGET, TALLY

pytestmark = pytest.mark.timeout(max(120, BUDGET * 3))

FUZZ = settings(max_examples=BUDGET, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
JOB = {"name": "edge", "schedule": "0 0 1 1 *", "kind": "python",
       "python": {"function": "sample_tasks:noop"}}


class Client:
    def __init__(self, cluster: LocalCluster) -> None:
        self.base = cluster.api
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {cluster.token}"

    def send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.base + path, timeout=30, **kwargs)
        TALLY.record(method, path.split("?")[0], response.status_code)
        assert response.status_code < 500, (method, path, response.status_code,
                                            response.text[:300])
        if response.status_code >= 400:
            assert response.headers["Content-Type"] == "application/problem+json"
        return response


@pytest.fixture(scope="module")
def client(fuzz_cluster: LocalCluster) -> Iterator[Client]:
    client = Client(fuzz_cluster)
    yield client
    client.session.close()


@pytest.fixture(scope="module")
def job_id(client: Client) -> str:
    response = client.send("POST", "/api/v1/jobs", json=JOB)
    assert response.status_code == 201
    return str(response.json()["id"])


# ---- cursors

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m)))
edge_instants = st.one_of(
    st.datetimes(datetime(1, 1, 1), datetime(1, 1, 3)),
    st.datetimes(datetime(9999, 12, 29), datetime(9999, 12, 31, 23, 59, 59, 999_999)),
    st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1)),
)
edge_times = st.builds(lambda moment, tz: moment.replace(tzinfo=tz), edge_instants,
                       st.one_of(st.just(UTC), offsets))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=40))
cursor_parts = st.one_of(json_scalars, edge_times.map(datetime.isoformat),
                         st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()))
cursors = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=140).map(_b64),
    st.lists(cursor_parts, max_size=4).map(lambda parts: _b64(json.dumps(parts).encode())),
    st.tuples(edge_times, st.uuids()).map(
        lambda p: _b64(json.dumps([p[0].isoformat(), str(p[1])]).encode())),
)


@FUZZ
@given(cursor=cursors, route=st.sampled_from(["jobs", "dead", "executions"]))
def test_any_cursor_is_a_page_or_a_400(client: Client, job_id: str, cursor: str,
                                       route: str) -> None:
    path = {"jobs": "/api/v1/jobs", "dead": "/api/v1/dead",
            "executions": f"/api/v1/jobs/{job_id}/executions"}[route]
    response = client.send("GET", path, params={"cursor": cursor})
    assert response.status_code in (200, 400, 422), response.text  # 422: over 200 chars


# ---- times at the calendar's edges

def rfc3339(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


schedules = st.one_of(
    st.sampled_from(["0 0 * * *", "0 12 * * *", "* * * * * *", "0 0 29 2 *", "0 0 * 2 1#5",
                     "@yearly", "@every 1s", "@every 3650d", "@every 1d", "immediate"]),
    edge_times.map(rfc3339),
)
zones = st.sampled_from(["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Berlin",
                         "Australia/Lord_Howe", "America/St_Johns"])


@FUZZ
@given(schedule=schedules, zone=zones, start=st.one_of(st.none(), edge_times),
       end=st.one_of(st.none(), edge_times), jitter=st.sampled_from([0, 1, 86_400]))
def test_a_job_bounded_at_the_calendar_edge_is_created_or_refused(
    client: Client, schedule: str, zone: str, start: datetime | None,
    end: datetime | None, jitter: int
) -> None:
    job: dict[str, Any] = {**JOB, "schedule": schedule, "timezone": zone, "jitter_s": jitter}
    if start is not None:
        job["start_at"] = rfc3339(start)
    if end is not None:
        job["end_at"] = rfc3339(end)
    response = client.send("POST", "/api/v1/jobs", json=job)
    if response.status_code == 201:
        created = response.json()
        fetched = client.send("GET", f"/api/v1/jobs/{created['id']}")
        assert fetched.status_code == 200
        patched = client.send("PATCH", f"/api/v1/jobs/{created['id']}",
                              json={"schedule": "@every 3650d"})
        assert patched.status_code in (200, 422)


@FUZZ
@given(schedule=schedules, zone=zones, start=st.one_of(st.none(), edge_times),
       count=st.integers(1, 100))
def test_a_preview_from_the_calendar_edge_answers(client: Client, schedule: str, zone: str,
                                                  start: datetime | None,
                                                  count: int) -> None:
    body: dict[str, Any] = {"schedule": schedule, "timezone": zone, "count": count}
    if start is not None:
        body["start"] = rfc3339(start)
    response = client.send("POST", "/api/v1/schedules/preview", json=body)
    assert response.status_code in (200, 422, 503), response.text
    if response.status_code == 200:
        items = response.json()["items"]
        assert len(items) <= count
        assert [i["utc"] for i in items] == sorted(i["utc"] for i in items)


# ---- deep JSON

openers = st.lists(st.sampled_from(['[', '{"k": ']), min_size=1, max_size=5000)


def nested(opening: list[str], leaf: str = "1") -> str:
    """JSON text nested len(opening) levels deep, built without recursion."""
    closing = "".join("]" if o == "[" else "}" for o in reversed(opening))
    return "".join(opening) + leaf + closing


@FUZZ
@given(opening=openers, where=st.sampled_from(
    ["args", "labels", "unknown", "env", "patch-args", "patch-top", "patch-retry",
     "preview"]))
def test_deep_json_anywhere_is_refused_or_stored(client: Client, job_id: str,
                                                 opening: list[str], where: str) -> None:
    deep = nested(opening)
    if where.startswith("patch"):
        body = {"patch-args": '{"python": {"args": {"x": HOLE}}}',
                "patch-top": '{"x": HOLE}', "patch-retry": '{"retry": HOLE}'}[where]
        method, path = "PATCH", f"/api/v1/jobs/{job_id}"
    elif where == "preview":
        method, path = "POST", "/api/v1/schedules/preview"
        body = '{"schedule": "0 0 * * *", "count": HOLE}'
    else:
        body = '{"name": "deep", "schedule": "0 0 1 1 *", "kind": "python", ' + {
            "args": '"python": {"function": "sample_tasks:noop", "args": {"x": HOLE}}}',
            "labels": '"python": {"function": "sample_tasks:noop"}, "labels": HOLE}',
            "unknown": '"python": {"function": "sample_tasks:noop"}, "x": HOLE}',
            "env": '"python": {"function": "sample_tasks:noop", "args": {"env": HOLE}}}',
        }[where]
        method, path = "POST", "/api/v1/jobs"
    response = client.send(method, path, data=body.replace("HOLE", deep).encode(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 201, 400, 422), response.text[:300]
    if response.status_code in (200, 201) and len(opening) > 40:
        raise AssertionError(f"{len(opening)} levels accepted at {where}")


def test_the_job_the_tier_patched_is_still_whole(client: Client, job_id: str) -> None:
    response = client.send("GET", f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200 and uuid.UUID(response.json()["id"])
