"""Values kept encrypted at rest (namespace secrets, webhook signing secrets): Fernet
(AES-128-CBC with HMAC-SHA256, from the well-kept ``cryptography`` package) under keys
from ``JOBSCHED_SECRETS_KEY``. Several comma-separated keys allow rotation: the first one
encrypts, every one decrypts, and ``reencrypt`` moves a value to the first key."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretsKeyError(ValueError):
    """The configured key is missing or malformed, or a value was sealed by another key."""


def new_key() -> str:
    """A fresh key for JOBSCHED_SECRETS_KEY."""
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        keys = [k.strip() for k in keys if k.strip()]
        if not keys:
            raise SecretsKeyError("no key: set JOBSCHED_SECRETS_KEY (make one with "
                                  "`jobsched secrets new-key`)")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError as exc:
            raise SecretsKeyError(f"JOBSCHED_SECRETS_KEY: not a key ({exc})") from None

    @classmethod
    def from_setting(cls, value: str | None) -> SecretBox:
        return cls((value or "").split(","))

    def seal(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise SecretsKeyError("a stored value was sealed with a key that is not in "
                                  "JOBSCHED_SECRETS_KEY") from None

    def reencrypt(self, sealed: bytes) -> bytes:
        """The value sealed again under the first (newest) key."""
        try:
            return self._fernet.rotate(sealed)
        except InvalidToken:
            raise SecretsKeyError("a stored value was sealed with a key that is not in "
                                  "JOBSCHED_SECRETS_KEY") from None
