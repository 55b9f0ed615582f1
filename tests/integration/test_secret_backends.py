"""The secrets backends on real servers: the store on PostgreSQL (namespaced rows, sealed
values, key rotation) and AWS Secrets Manager on a local moto server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import boto3
import pytest
from moto.server import ThreadedMotoServer

from jobsched.adapters.postgres.secrets import PostgresSecrets
from jobsched.crypto import SecretBox, new_key
from jobsched.secrets_admin import reseal_all
from jobsched.settings import load_settings
from jobsched.worker.secrets import (
    AwsSecretsManagerBackend,
    MissingSecret,
    SecretResolver,
    StoreBackend,
)
from jobsched_dev.processes import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(pool: asyncpg.Pool) -> PostgresSecrets:
    return PostgresSecrets(pool)


async def test_put_replaces_within_a_namespace_and_lists_names_only(
        store: PostgresSecrets) -> None:
    box = SecretBox([new_key()])
    row, created = await store.put_secret("a", "TOKEN", box.seal(b"one"))
    assert created and row["name"] == "TOKEN" and set(row) == {"name", "created_at",
                                                                 "updated_at"}
    row2, created = await store.put_secret("a", "TOKEN", box.seal(b"two"))
    assert not created and row2["created_at"] == row["created_at"]
    await store.put_secret("b", "TOKEN", box.seal(b"b's"))
    for i in range(3):
        await store.put_secret("a", f"N{i}", box.seal(b"x"))
    first = await store.list_secrets("a", after=None, limit=2)
    rest = await store.list_secrets("a", after=first[-1]["name"], limit=10)
    assert [r["name"] for r in first + rest] == ["N0", "N1", "N2", "TOKEN"]
    assert all("sealed" not in r for r in first + rest)
    sealed = await store.sealed_secrets("a", ["TOKEN", "MISSING"])
    assert list(sealed) == ["TOKEN"] and box.open(sealed["TOKEN"]) == b"two"
    assert box.open((await store.sealed_secrets("b", ["TOKEN"]))["TOKEN"]) == b"b's"
    assert await store.delete_secret("a", "TOKEN")
    assert not await store.delete_secret("a", "TOKEN")
    assert await store.sealed_secrets("a", ["TOKEN"]) == {}
    assert (await store.sealed_secrets("b", ["TOKEN"])) != {}


async def test_the_database_never_holds_a_value_in_clear(store: PostgresSecrets,
                                                         pool: asyncpg.Pool) -> None:
    box = SecretBox([new_key()])
    await store.put_secret("a", "CLEAR", box.seal(b"plain-text-value"))
    dump = await pool.fetchval("SELECT string_agg(t::text, ',') FROM secrets t")
    assert "plain-text-value" not in dump
    assert b"plain-text-value" not in bytes(await pool.fetchval("SELECT sealed FROM secrets"))


async def test_key_rotation_reseals_every_value_under_the_new_key(
        store: PostgresSecrets) -> None:
    old, new = new_key(), new_key()
    for namespace in ("a", "b"):
        for i in range(7):
            await store.put_secret(namespace, f"S{i}", SecretBox([old]).seal(f"{i}".encode()))
    stranger = SecretBox([new_key()]).seal(b"sealed elsewhere")
    await store.put_secret("c", "LOST", stranger)
    report = await reseal_all(store, SecretBox([new, old]))
    assert (report.resealed, report.unreadable) == (14, 1)
    only_new = SecretBox([new])
    for namespace in ("a", "b"):
        values = await store.sealed_secrets(namespace, [f"S{i}" for i in range(7)])
        assert sorted(only_new.open(v) for v in values.values()) == [
            f"{i}".encode() for i in range(7)]
    assert (await store.sealed_secrets("c", ["LOST"]))["LOST"] == stranger
    resolver = SecretResolver([StoreBackend(store, only_new)])
    assert await resolver.for_namespace("a").resolve({"X": {"secret": "S3"}}) == {"X": "3"}


async def test_a_value_replaced_during_rotation_keeps_the_new_value(
        store: PostgresSecrets) -> None:
    old, new = new_key(), new_key()
    await store.put_secret("a", "S", SecretBox([old]).seal(b"before"))
    [read] = await store.sealed_batch(("", ""), 10)
    await store.put_secret("a", "S", SecretBox([new]).seal(b"after"))  # a PUT meanwhile
    assert not await store.reseal(read, SecretBox([new, old]).reencrypt(read.sealed))
    stored = await store.sealed_secrets("a", ["S"])
    assert SecretBox([new]).open(stored["S"]) == b"after"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A local AWS Secrets Manager (moto) on a free port of 127.0.0.1."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
async def aws(moto_url: str) -> AsyncIterator[AwsSecretsManagerBackend]:
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url)
    client.create_secret(Name="jobsched/a/API_KEY", SecretString="a-aws-value")
    client.create_secret(Name="jobsched/b/B_ONLY", SecretString="b-aws-value")
    client.create_secret(Name="jobsched/a/BINARY", SecretBinary=b"bytes-value")
    settings = load_settings({}, environ={"JOBSCHED_SECRETS_AWS_REGION": "us-east-1",
                                          "JOBSCHED_SECRETS_AWS_ENDPOINT_URL": moto_url},
                             config_path=None)
    backend = AwsSecretsManagerBackend.from_settings(settings)
    assert backend is not None
    yield backend
    for name in ("jobsched/a/API_KEY", "jobsched/b/B_ONLY", "jobsched/a/BINARY"):
        client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


async def test_aws_secrets_resolve_under_the_namespace_prefix(
        aws: AwsSecretsManagerBackend) -> None:
    run = SecretResolver([aws]).for_namespace("a")
    resolved = await run.resolve({"K": {"secret": "API_KEY"}, "B": {"secret": "BINARY"}})
    assert resolved == {"K": "a-aws-value", "B": "bytes-value"}
    errors = []
    for name in ("B_ONLY", "NOBODY"):  # b's secret, and one nobody has
        with pytest.raises(MissingSecret) as raised:
            await run.resolve({"K": {"secret": name}})
        errors.append(str(raised.value).replace(name, "NAME"))
    assert errors[0] == errors[1]
    assert "AWS Secrets Manager ('jobsched/a/NAME')" in errors[0]


async def test_an_unreachable_aws_endpoint_fails_the_lookup_with_a_reason() -> None:
    backend = AwsSecretsManagerBackend("us-east-1", f"http://127.0.0.1:{free_port()}",
                                       "jobsched/")
    with pytest.raises(MissingSecret, match="could not be read: AWS Secrets Manager"):
        await SecretResolver([backend]).for_namespace("a").resolve({"K": {"secret": "X"}})
