"""``jobsched secrets new-key|rotate-key``: the key that seals the secrets store.

Rotation, step by step (docs/security.md): put a new key first in JOBSCHED_SECRETS_KEY,
keeping the old ones after it, on every api and worker; run ``rotate-key`` (it reseals
every stored value under the first key); then drop the old keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobsched.crypto import SecretBox, SecretsKeyError
from jobsched.ports import SecretRepository

BATCH = 500


@dataclass
class RotationReport:
    resealed: int = 0
    changed_meanwhile: int = 0  # replaced by a PUT while being resealed: already current
    unreadable: int = 0  # sealed with a key that is not configured


async def reseal_all(store: SecretRepository, box: SecretBox) -> RotationReport:
    """Every stored value sealed again under the first key, a batch at a time; a value a
    PUT replaces meanwhile is left as the PUT wrote it."""
    report = RotationReport()
    after = ("", "")
    while batch := await store.sealed_batch(after, BATCH):
        for secret in batch:
            try:
                new = box.reencrypt(secret.sealed)
            except SecretsKeyError:
                report.unreadable += 1
                continue
            if await store.reseal(secret, new):
                report.resealed += 1
            else:
                report.changed_meanwhile += 1
        after = (batch[-1].namespace, batch[-1].name)
    return report


async def rotate_key(dsn: str, secrets_key: str | None) -> RotationReport:
    from jobsched.adapters import postgres
    from jobsched.adapters.postgres.secrets import PostgresSecrets

    box = SecretBox.from_setting(secrets_key)
    pool = await postgres.create_pool(dsn, max_size=1)
    try:
        return await reseal_all(PostgresSecrets(pool), box)
    finally:
        await pool.close()
