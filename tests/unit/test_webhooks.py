"""Webhooks' pure parts: the retry schedule with time injected, what an answer means, the
body, the secrets and their signatures (verified with the receivers' own library), and
the event types and states being the same in the schema, the API and the domain."""

from __future__ import annotations

import base64
import itertools
import re
import typing
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from jobsched.adapters.postgres.migrate import migration_files
from jobsched.api.models import DeliveryOut, WebhookCreate
from jobsched.crypto import SecretBox, new_key
from jobsched.domain.egress import EgressPolicy
from jobsched.domain.webhooks import (
    EVENT_TYPES,
    MAX_ATTEMPTS,
    RETRY_SCHEDULE_S,
    DeliveryState,
    Verdict,
    delivery_body,
    judge_answer,
    labels_match,
    new_secret,
    next_attempt_at,
    retry_delay,
)
from jobsched.ports import DueDelivery
from jobsched.settings import Settings
from jobsched.worker.webhooks import WebhookDeliverer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_schedule_is_standard_webhooks_and_ends_after_ten_attempts() -> None:
    assert RETRY_SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    middle = [retry_delay(n, rand=lambda: 0.5) for n in range(1, MAX_ATTEMPTS)]
    assert middle == [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    assert retry_delay(MAX_ATTEMPTS, rand=lambda: 0.5) is None
    assert retry_delay(MAX_ATTEMPTS + 3) is None
    with pytest.raises(ValueError):
        retry_delay(0)


def test_each_wait_is_jittered_within_ten_percent_either_way() -> None:
    low = retry_delay(2, rand=lambda: 0.0)
    high = retry_delay(2, rand=lambda: 0.999999)
    assert low == pytest.approx(270) and high == pytest.approx(330, abs=0.01)
    for n in range(1, MAX_ATTEMPTS):
        for r in (0.0, 0.3, 0.7, 0.999):
            delay = retry_delay(n, rand=lambda r=r: r)
            assert delay is not None
            assert 0.9 * RETRY_SCHEDULE_S[n] <= delay <= 1.1 * RETRY_SCHEDULE_S[n]


def test_a_delivery_failing_every_time_is_tried_at_the_scheduled_times() -> None:
    """Walk a delivery whose receiver always answers 500 through its whole life on an
    injected clock: ten attempts over 3 days 3.5 hours, then exhausted."""
    clock = NOW
    tried = []
    attempts = 0
    while True:
        attempts += 1
        tried.append(clock)
        verdict = judge_answer(500, attempts)
        if verdict == Verdict.EXHAUSTED:
            break
        assert verdict == Verdict.RETRY
        due = next_attempt_at(attempts, clock, rand=lambda: 0.5)
        assert due is not None
        clock = due
    assert attempts == MAX_ATTEMPTS == 10
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(tried)]
    assert gaps == list(RETRY_SCHEDULE_S[1:])
    assert tried[-1] - tried[0] == timedelta(days=3, hours=3, minutes=35, seconds=5)


@pytest.mark.parametrize(("status", "attempt", "verdict"), [
    (200, 1, Verdict.DELIVERED), (204, 10, Verdict.DELIVERED), (299, 3, Verdict.DELIVERED),
    (500, 1, Verdict.RETRY), (None, 1, Verdict.RETRY), (302, 1, Verdict.RETRY),
    (404, 9, Verdict.RETRY), (429, 10, Verdict.EXHAUSTED), (None, 10, Verdict.EXHAUSTED),
    (410, 1, Verdict.GONE), (410, 10, Verdict.GONE),
])
def test_what_an_answer_means(status: int | None, attempt: int, verdict: Verdict) -> None:
    assert judge_answer(status, attempt) == verdict


def test_the_body_is_type_timestamp_data_and_the_same_bytes_every_time() -> None:
    data = {"id": "x", "labels": {"team": "a"}, "error": None}
    body = delivery_body("execution.dead", NOW, data)
    assert orjson.loads(body) == {"type": "execution.dead",
                                  "timestamp": "2026-03-01T12:00:00.000000Z", "data": data}
    assert delivery_body("execution.dead", NOW, dict(data)) == body


def test_labels_filter_needs_every_label_of_the_endpoint() -> None:
    assert labels_match({}, {"team": "a"})
    assert labels_match({"team": "a"}, {"team": "a", "env": "prod"})
    assert not labels_match({"team": "a", "env": "prod"}, {"team": "a"})
    assert not labels_match({"team": "b"}, {"team": "a"})


def test_a_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", first)
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


def _deliverer(box: SecretBox) -> WebhookDeliverer:
    return WebhookDeliverer(Settings(instance="unit"), store=None,  # type: ignore[arg-type]
                            box=box, policy=EgressPolicy())


def _due(box: SecretBox, secret: str, previous: str | None = None) -> DueDelivery:
    return DueDelivery(
        endpoint_id=uuid.uuid4(), event_id=uuid.uuid4(), event_type="execution.succeeded",
        data={"id": "e"}, created_at=NOW, attempt=1, url="https://example.com/hook",
        secret=box.seal(secret.encode()),
        previous_secret=box.seal(previous.encode()) if previous else None)


def test_the_signature_verifies_with_the_standard_webhooks_library() -> None:
    box = SecretBox([new_key()])
    secret = new_secret()
    delivery = _due(box, secret)
    body = delivery_body(delivery.event_type, delivery.created_at, delivery.data)
    now = datetime.now(UTC)
    headers = _deliverer(box).signed_headers(delivery, body, now)
    assert headers["webhook-id"] == str(delivery.event_id)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]
    assert Webhook(secret).verify(body, headers) == orjson.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b'"e"', b'"f"'), headers)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    box = SecretBox([new_key()])
    old, new = new_secret(), new_secret()
    delivery = _due(box, new, previous=old)
    body = delivery_body(delivery.event_type, delivery.created_at, delivery.data)
    headers = _deliverer(box).signed_headers(delivery, body, datetime.now(UTC))
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert Webhook(new).verify(body, headers)
    assert Webhook(old).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def _migration() -> str:
    return next(sql for _, name, sql in migration_files() if name.endswith("_webhooks.sql"))


def test_event_types_are_the_same_in_the_domain_the_api_and_the_database() -> None:
    literal = typing.get_args(typing.get_args(WebhookCreate.model_fields["events"].annotation)[0])
    assert set(literal) == set(EVENT_TYPES)
    match = re.search(r"p_event_type NOT IN \(([^)]*)\)", _migration())
    assert match is not None
    assert set(re.findall(r"'([a-z_.]+)'", match.group(1))) == set(EVENT_TYPES)


def test_delivery_states_are_the_same_in_the_domain_the_api_and_the_database() -> None:
    match = re.search(r"CHECK \(state IN \(([^)]*)\)\)", _migration())
    assert match is not None
    assert set(re.findall(r"'([a-z_]+)'", match.group(1))) == {s.value for s in DeliveryState}
    literal = typing.get_args(DeliveryOut.model_fields["state"].annotation)
    assert set(literal) == {s.value for s in DeliveryState}
