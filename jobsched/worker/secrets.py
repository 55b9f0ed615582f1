"""Secret references resolved on the worker, at the last moment, in the job's namespace.

A job stores ``{"secret": "NAME"}`` where a value would go (shell env, HTTP headers); only
that name is ever in the API, the database's jobs, the queue or a log. For a run of a job
of namespace ``ns`` the worker looks NAME up in ``ns`` alone, in the first backend that has
it (DESIGN.md "Secrets"):

1. the built-in store (``PUT /api/v1/secrets/NAME``), sealed with JOBSCHED_SECRETS_KEY;
2. the file ``<secrets_dir>/<ns>/NAME`` (a trailing newline dropped);
3. AWS Secrets Manager, the secret ``<secrets_aws_prefix><ns>/NAME``, when configured.

Every lookup names ``ns``: a name another namespace owns is looked for exactly where a
name nobody has is looked for, and fails with the same words. The values a run used (and
the worker's own credentials) are masked in everything recorded of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from jobsched.crypto import SecretBox, SecretsKeyError
from jobsched.domain.auth import NAMESPACE_RE
from jobsched.ports import SecretReader
from jobsched.settings import ConfigError, Settings

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 65_536
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Shorter values are not masked in output: masking "1" would garble every number.
MIN_MASKED_LENGTH = 4
AWS_TIMEOUT_S = 15.0
#: The environment backend of earlier versions: any namespace could read any of these.
RETIRED_ENV_PREFIX = "JOBSCHED_SECRET_"


class MissingSecret(Exception):
    """A referenced secret cannot be resolved; the message names it, never a value."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"secret {name!r} {why}")
        self.name = name


class SecretBackend(Protocol):
    """One place secrets are kept. ``lookup`` returns the names it has (absent ones are
    left out) and raises MissingSecret for one it has but cannot hand over."""

    def where(self, namespace: str, name: str) -> str: ...

    async def lookup(self, namespace: str, names: Sequence[str]) -> dict[str, str]: ...


def _text(name: str, data: bytes) -> str:
    if len(data) > MAX_SECRET_BYTES:
        raise MissingSecret(name, f"is larger than {MAX_SECRET_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise MissingSecret(name, "is not UTF-8 text") from None


class StoreBackend:
    """The built-in store: rows of the ``secrets`` table, opened with the worker's key."""

    def __init__(self, reader: SecretReader, box: SecretBox | None) -> None:
        self.reader = reader
        self.box = box

    def where(self, namespace: str, name: str) -> str:
        return "the secrets store"

    async def lookup(self, namespace: str, names: Sequence[str]) -> dict[str, str]:
        found = await self.reader.sealed_secrets(namespace, names)
        values = {}
        for name, sealed in found.items():
            if self.box is None:
                raise MissingSecret(name, "is in the secrets store, but this worker has no "
                                          "JOBSCHED_SECRETS_KEY to open it")
            try:
                values[name] = _text(name, self.box.open(sealed))
            except SecretsKeyError:
                raise MissingSecret(name, "is in the secrets store, sealed with a key that "
                                          "is not in this worker's JOBSCHED_SECRETS_KEY") from None
        return values


class DirectoryBackend:
    """One file per secret under a directory per namespace: ``<root>/<namespace>/NAME``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, namespace: str, name: str) -> str:
        return str(self.root / namespace / name)

    async def lookup(self, namespace: str, names: Sequence[str]) -> dict[str, str]:
        values = {}
        for name in names:
            path = self.root / namespace / name
            try:
                with path.open("rb") as handle:
                    data = handle.read(MAX_SECRET_BYTES + 1)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise MissingSecret(name, f"cannot be read from {path}: "
                                          f"{exc.strerror}") from None
            values[name] = _text(name, data).removesuffix("\n").removesuffix("\r")
        return values


class AwsSecretsManagerBackend:
    """AWS Secrets Manager through boto3, the AWS SDK, on a thread: a lookup is rare (only
    for names the store and the directory do not have) and short, and boto3 is the
    maintained client (aiobotocore pins exact botocore versions, which clash with other
    packages). Credentials come from boto3's usual chain (environment, profile, instance
    or pod role)."""

    def __init__(self, region: str | None, endpoint_url: str | None, prefix: str) -> None:
        # At DEBUG botocore logs whole responses, secret values included: never that.
        for name in ("boto3", "botocore", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.region = region
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsSecretsManagerBackend | None:
        if settings.secrets_aws_region is None and settings.secrets_aws_endpoint_url is None:
            return None
        try:
            import boto3  # noqa: F401 - fail at start-up, not at the first lookup
        except ImportError:
            raise ConfigError("secrets_aws_region/secrets_aws_endpoint_url are set, but "
                              "AWS Secrets Manager lookups need boto3: pip install "
                              "'jobsched[aws]'") from None
        return cls(settings.secrets_aws_region, settings.secrets_aws_endpoint_url,
                   settings.secrets_aws_prefix)

    def secret_id(self, namespace: str, name: str) -> str:
        return f"{self.prefix}{namespace}/{name}"

    def where(self, namespace: str, name: str) -> str:
        return f"AWS Secrets Manager ({self.secret_id(namespace, name)!r})"

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
        return boto3.session.Session().client("secretsmanager", region_name=self.region,
                                              endpoint_url=self.endpoint_url, config=config)

    def _get(self, secret_id: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = self._make_client()  # clients are thread-safe; sessions are not
        try:
            answer = self._client.get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            if code == "ResourceNotFoundException":
                return None
            raise LookupError(f"AWS Secrets Manager answered {code}") from None
        except BotoCoreError as exc:
            raise LookupError(f"AWS Secrets Manager: {type(exc).__name__}") from None
        if "SecretString" in answer:
            return str(answer["SecretString"]).encode()
        return bytes(answer.get("SecretBinary", b""))

    async def lookup(self, namespace: str, names: Sequence[str]) -> dict[str, str]:
        values = {}
        for name in names:
            try:
                data = await asyncio.wait_for(
                    asyncio.to_thread(self._get, self.secret_id(namespace, name)),
                    AWS_TIMEOUT_S)
            except TimeoutError:
                raise MissingSecret(name, "could not be read: AWS Secrets Manager did not "
                                          f"answer within {AWS_TIMEOUT_S:g}s") from None
            except LookupError as exc:
                raise MissingSecret(name, f"could not be read: {exc}") from None
            if data is not None:
                values[name] = _text(name, data)
        return values


class RunSecrets:
    """The secrets of one run: lookups in its job's namespace only, and what to mask in
    what is recorded of it (the values it used and the worker's own credentials)."""

    def __init__(self, namespace: str, backends: Sequence[SecretBackend],
                 always_masked: Sequence[str] = ()) -> None:
        self.namespace = namespace
        self.backends = backends
        self.used: list[str] = []
        self._always = always_masked

    @property
    def masked(self) -> list[str]:
        return [*self.used, *self._always]

    async def resolve(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Plain values kept, references replaced by their values."""
        names = {str(v.get("secret", "")) for v in values.values() if isinstance(v, dict)}
        found = await self._lookup(sorted(names))
        resolved: dict[str, str] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                secret = found[str(value.get("secret", ""))]
                resolved[key] = secret
                self.used.append(secret)
            else:
                resolved[key] = str(value)
        return resolved

    async def _lookup(self, names: Sequence[str]) -> dict[str, str]:
        for name in names:
            if not NAME_RE.fullmatch(name):  # also keeps a name from walking out of a directory
                raise MissingSecret(name, "is not a valid secret name")
        if not NAMESPACE_RE.fullmatch(self.namespace):
            raise MissingSecret(names[0] if names else "*",
                                f"cannot be looked up: namespace {self.namespace!r} is invalid")
        found: dict[str, str] = {}
        for backend in self.backends:
            wanted = [n for n in names if n not in found]
            if not wanted:
                break
            found.update(await backend.lookup(self.namespace, wanted))
        for name in names:
            if name not in found:
                places = ", ".join(b.where(self.namespace, name) for b in self.backends)
                raise MissingSecret(name, f"is not defined in namespace {self.namespace!r} "
                                          f"(looked in: {places or 'no secrets backend'})")
        return found


class SecretResolver:
    """The worker's secrets backends, in order; ``for_namespace`` gives a run its view."""

    def __init__(self, backends: Sequence[SecretBackend] = (),
                 always_masked: Sequence[str] = ()) -> None:
        self.backends = list(backends)
        self.always_masked = [v for v in always_masked if len(v) >= MIN_MASKED_LENGTH]
        #: ``longest(always_masked)``, which every run's output buffer is sized by.
        self.longest_masked = longest(self.always_masked)

    @classmethod
    def from_settings(cls, settings: Settings, store: SecretReader | None = None,
                      environ: Mapping[str, str] | None = None) -> SecretResolver:
        environ = os.environ if environ is None else environ
        backends: list[SecretBackend] = []
        if store is not None:
            box = SecretBox.from_setting(settings.secrets_key) if settings.secrets_key else None
            backends.append(StoreBackend(store, box))
        if settings.secrets_dir:
            backends.append(DirectoryBackend(Path(settings.secrets_dir)))
        aws = AwsSecretsManagerBackend.from_settings(settings)
        if aws is not None:
            backends.append(aws)
        return cls(backends, worker_credentials(settings, environ))

    def for_namespace(self, namespace: str) -> RunSecrets:
        return RunSecrets(namespace, self.backends, self.always_masked)


def worker_credentials(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """What the worker itself holds and no recorded output may show: the passwords in its
    connection URLs, its secrets keys and AWS credentials from its environment."""
    values: list[str] = []
    for url in (settings.database_url, settings.database_read_url, settings.amqp_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                values.append(password)
    if settings.secrets_key:
        values += [k.strip() for k in settings.secrets_key.split(",") if k.strip()]
    values += [environ[k] for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
               if environ.get(k)]
    return values


def warn_about_retired_sources(settings: Settings, environ: Mapping[str, str]) -> None:
    """One start-up warning for each way secrets were given to earlier versions that this
    one no longer reads, so an upgrade does not silently lose them."""
    retired = sorted(k for k in environ if k.startswith(RETIRED_ENV_PREFIX))
    if retired:
        log.warning("%d %s* environment variable(s) are ignored: a worker-wide secret would "
                    "be readable by every namespace; store them with PUT /api/v1/secrets or "
                    "as <secrets_dir>/<namespace>/<NAME>", len(retired), RETIRED_ENV_PREFIX)
    if settings.secrets_dir:
        root = Path(settings.secrets_dir)
        try:
            loose = [p.name for p in root.iterdir() if p.is_file()]
        except OSError:
            loose = []
        if loose:
            log.warning("%d file(s) directly in secrets_dir %s are ignored: secrets are read "
                        "from <secrets_dir>/<namespace>/<NAME> only", len(loose), root)


def mask(text: str | None, secrets: Iterable[str]) -> str | None:
    """The text with every secret value (of MIN_MASKED_LENGTH or more) replaced by ``***``."""
    if not text:
        return text
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_MASKED_LENGTH:
            text = text.replace(secret, "***")
    return text


def mask_bounded(text: str | None, secrets: Iterable[str], limit: int) -> str | None:
    """Masked first, then cut to ``limit`` characters: a cut never leaves part of a value."""
    masked = mask(text, secrets)
    return masked[:limit] if masked else masked


def longest(secrets: Iterable[str]) -> int:
    """Bytes of the longest value: how far past the output limit to keep reading, so that
    a value that straddles the limit is still whole when it is masked."""
    return max((len(s.encode()) for s in secrets), default=0)
