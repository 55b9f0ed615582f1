"""Encryption at rest with key rotation, and the egress policy's address rules."""

from __future__ import annotations

import pytest

from jobsched.crypto import SecretBox, SecretsKeyError, new_key
from jobsched.domain.egress import EgressError, EgressPolicy


def test_a_sealed_value_opens_under_any_configured_key_and_moves_to_the_newest() -> None:
    old, new = new_key(), new_key()
    sealed = SecretBox([old]).seal(b"hunter2")
    assert b"hunter2" not in sealed
    rotated_box = SecretBox([new, old])
    assert rotated_box.open(sealed) == b"hunter2"
    moved = rotated_box.reencrypt(sealed)
    assert SecretBox([new]).open(moved) == b"hunter2"
    with pytest.raises(SecretsKeyError, match="not in"):
        SecretBox([new]).open(sealed)


def test_a_missing_or_malformed_key_is_refused_clearly() -> None:
    with pytest.raises(SecretsKeyError, match="JOBSCHED_SECRETS_KEY"):
        SecretBox.from_setting(None)
    with pytest.raises(SecretsKeyError, match="not a key"):
        SecretBox.from_setting("short")


@pytest.mark.parametrize(("address", "refused"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "metadata"),
    ("::ffff:169.254.169.254", "metadata"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("fd00:ec2::254", "AWS"),
    ("100.100.100.200", "Alibaba"), ("8.8.8.8", None), ("10.0.0.1", None),
])
def test_the_default_policy(address: str, refused: str | None) -> None:
    reason = EgressPolicy().refusal(address)
    assert (reason is None) == (refused is None)
    if refused:
        assert refused in (reason or "")


def test_allow_lifts_a_default_and_deny_always_wins() -> None:
    policy = EgressPolicy.from_lists(allow=["127.0.0.0/8", "10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("10.2.0.1") is None
    assert "DENY" in (policy.refusal("10.1.2.3") or "")
    assert policy.literal_refusal("http://example.com/") is None  # names: at run time
    assert "link-local" in (policy.literal_refusal("http://169.254.169.254/latest") or "")
    assert "loopback" in (EgressPolicy().literal_refusal("http://[::1]:8080/") or "")
    with pytest.raises(EgressError, match="not-a-cidr"):
        EgressPolicy.from_lists(allow=["not-a-cidr"])


def test_a_url_whose_host_cannot_be_read_is_refused_not_a_crash() -> None:
    # found by the OpenAPI fuzzer: urlsplit raises on an unbalanced bracket
    reason = EgressPolicy().literal_refusal("http://|X1xA%maXxo<QaIG$C]")
    assert reason is not None and "cannot be read" in reason
