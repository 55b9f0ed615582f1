"""One typed settings object: defaults < TOML file < ``JOBSCHED_*`` environment < CLI flags.

The environment names are part of the public interface (deployments and tests set them),
so every field maps to exactly one ``JOBSCHED_<FIELD>`` variable.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobsched.domain.egress import EgressPolicy, parse_cidrs
from jobsched.domain.priority import Priority

ENV_PREFIX = "JOBSCHED_"
DEFAULT_CONFIG_PATH = Path("config/jobsched.toml")
SECRET_FIELDS = frozenset({"database_url", "database_read_url", "amqp_url"})
# Shown as *** at start-up, whatever their value.
HIDDEN_FIELDS = frozenset({"secrets_key"})


class ConfigError(Exception):
    """Invalid configuration: the message is one line naming the key and the reason."""


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Several hosts (postgresql://h1:5432,h2:5432/db) name a primary and its standbys:
    # the role connects to whichever is read-write and follows a promotion.
    database_url: str = "postgresql://localhost/jobsched"
    # Optional read replica(s) for the api's list and get queries (never for anything a
    # guarantee depends on); the primary answers whenever the replica cannot.
    database_read_url: str | None = None
    amqp_url: str = "amqp://guest:guest@localhost/"
    zookeeper_hosts: str = "localhost:2181"
    # With 1 s ZooKeeper ticks a session ends 3-4 s after its holder dies: the take-over time.
    zookeeper_session_timeout_s: float = Field(3.0, ge=2.0, le=120.0)
    cluster: str = "default"
    instance: str = Field(default_factory=_default_instance, min_length=1, max_length=200)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # A workflow's create or PATCH body: 10,000 nodes take more than max_body_bytes.
    max_workflow_body_bytes: int = Field(16 * 1_048_576, ge=1024)
    # The health and metrics server of the scheduler and worker roles; 0 picks a free port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9100, ge=0, le=65535)

    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Seconds between two malloc_trim(0) calls, which give the pages glibc's heap holds
    # free back to the OS (jobsched/memory.py); 0: never.
    memory_trim_interval_s: float = Field(60.0, ge=0, le=86_400)
    # Allocations (less deallocations) of tracked objects between two collections of the
    # cyclic garbage collector's youngest generation (Python's default: 700). Each run makes
    # a few tasks, futures and frames, so at 700 a busy role collected every few runs:
    # 10 % of the worker's and the leader's CPU in a burn-down (jobsched/memory.py).
    gc_threshold: int = Field(50_000, ge=700, le=10_000_000)
    # The roles' event loop: uvloop where it is installed (a dependency on Linux and
    # macOS), else asyncio's own; "asyncio" forces asyncio's, "uvloop" refuses to start
    # without uvloop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    # scheduler
    scheduler_poll_s: float = Field(1.0, gt=0, le=60)
    # Jobs that allow overlap are fired this far ahead of their time and held by the
    # worker until due, so publishing and queueing happen before the fire, not after.
    scheduler_lookahead_s: float = Field(1.0, ge=0, le=5)
    # Batches being published (with confirms) while the leader goes on firing.
    scheduler_publish_concurrency: int = Field(8, ge=1, le=64)
    scheduler_batch_size: int = Field(1000, ge=1, le=100_000)
    republish_after_s: float = Field(10.0, gt=0)
    # New fires are marked published (out of the outbox) this long after their confirms,
    # at most a quarter of republish_after_s: by then most have been claimed, and the
    # claim has marked them already, so the mark writes nothing for them (0: mark at once;
    # what is sent again, by the sweep or by hand, is always marked at once). Marks still
    # waiting when a leadership term ends are left to the next leader's sweep, which
    # re-publishes those not claimed yet (a duplicate message is harmless: a claim is the
    # queued -> running transition).
    publish_mark_delay_s: float = Field(2.0, ge=0, le=60)
    # Attempts of one band published together travel in one RabbitMQ message, up to this
    # many (1: a message per attempt, as workers before this setting read them).
    message_attempts: int = Field(100, ge=1, le=1000)
    # A fire later than this is a misfire (its job's misfire policy decides it); a fire
    # late by less runs as a normal fire (Quartz's misfireThreshold).
    misfire_threshold_s: float = Field(5.0, ge=0, le=3600)

    # worker
    # Deliveries a worker holds per priority band (one queue each): runs fired ahead wait
    # here until due and runs wait for a free slot, unclaimed (a worker that dies loses
    # none of them), so this is larger than the runs it executes at once.
    worker_prefetch: int = Field(2048, ge=1, le=65535)
    # Runs at once: python and http runs are cheap (a coroutine or a thread slot), so the
    # limit is high and 1,000 runs due at the same second all start at once, the slots
    # kept for high runs aside (1,120 of 1,280 for normal and low); shell runs are
    # processes and have their own, lower limit within it.
    worker_concurrency: int = Field(1280, ge=1, le=65535)
    # The share of those slots kept for high-priority runs: normal and low ones together
    # hold at most the rest, so a high run that comes while a backlog of low work fills
    # the worker starts at once (normal and low always keep at least one slot).
    worker_high_reserve: float = Field(0.125, ge=0, lt=1)
    shell_concurrency: int = Field(64, ge=1, le=65535)
    worker_lease_s: float = Field(30.0, ge=1)
    # A run fired ahead of its time is claimed this long before it is due, so the claim's
    # round trip is not added to its start; it runs when due.
    worker_claim_ahead_s: float = Field(0.2, ge=0, le=5)
    # Attempts an execution may lose with its worker (lease lapsed) before it is dead:
    # lost attempts do not count against the job's max_attempts, but a task that kills its
    # worker every time must end.
    lost_attempts_limit: int = Field(3, ge=1, le=100)
    output_limit_bytes: int = Field(65_536, ge=0)
    # A running python or shell attempt's output so far is written this often (one
    # statement for every run whose output changed; 0: only when the attempt ends).
    output_flush_s: float = Field(1.0, ge=0, le=3600)
    drain_timeout_s: float = Field(30.0, ge=0)
    imports: tuple[str, ...] = ()

    # history: finished executions older than this are purged by the leader in batches;
    # jobs may keep fewer (their history limits)
    retention_days: float = Field(30.0, gt=0)
    retention_interval_s: float = Field(60.0, ge=1)

    # security (docs/security.md)
    # Off only for local development: every request then acts as an admin of "default".
    auth_enabled: bool = True
    # How long an api process trusts a token it has looked up: a revocation takes effect
    # on every api within this time.
    token_cache_s: float = Field(5.0, ge=0, le=300)
    # Job kinds refused on this deployment (api: 403 on create/patch/trigger; worker: the
    # attempt fails), e.g. JOBSCHED_DISABLED_KINDS=shell.
    disabled_kinds: tuple[Literal["shell", "http", "python"], ...] = ()
    # Active or paused jobs one namespace may hold; 0 lifts the quota.
    max_active_jobs: int = Field(10_000, ge=0)
    # Per-token token bucket of each api process: sustained requests/s and burst; 0 lifts it.
    rate_limit_per_s: float = Field(100.0, ge=0)
    rate_limit_burst: int = Field(200, ge=1)
    max_request_headers: int = Field(64, ge=8, le=128)
    # Failed authentications (a malformed or unknown token) per client address, in each
    # api process: sustained per second and burst; past them the address gets 429 without
    # its tokens being looked up. 0 lifts it.
    auth_failures_per_s: float = Field(1.0, ge=0)
    auth_failure_burst: int = Field(20, ge=1)
    # Addresses or CIDR ranges of the proxies in front of the api (nginx in compose.yaml):
    # only a request from one of them has its X-Forwarded-For read for the client address.
    trusted_proxies: tuple[str, ...] = ()
    # An Idempotency-Key is answered with its first job for at least this long.
    idempotency_ttl_s: float = Field(86_400.0, ge=86_400)
    # Secrets (docs/security.md "Secrets"). A job's {"secret": "NAME"} resolves in the
    # job's own namespace, from the first of: the built-in store (PUT /api/v1/secrets,
    # sealed with secrets_key: comma-separated Fernet keys, the first encrypts, all
    # decrypt), <secrets_dir>/<namespace>/NAME, AWS Secrets Manager (when a region is set)
    # under the id <secrets_aws_prefix><namespace>/NAME.
    secrets_key: str | None = None
    secrets_dir: str | None = None
    secrets_aws_region: str | None = None
    secrets_aws_endpoint_url: str | None = None
    secrets_aws_prefix: str = Field("jobsched/", max_length=256)
    # Where http jobs may connect (docs/security.md "Egress"): loopback, link-local (cloud
    # metadata), unspecified and multicast addresses are refused unless allowed here;
    # deny adds ranges to refuse and always wins. Comma-separated CIDRs.
    http_allow_cidrs: tuple[str, ...] = ()
    http_deny_cidrs: tuple[str, ...] = ()
    # Shell jobs run each under a uid of its own: a worker takes a block of
    # shell_concurrency uids (no passwd or group entry may use them) from shell_uid_base
    # on, or the next free block if another worker on the host holds it; it must be root
    # to switch to them, else it refuses shell runs. Resource limits: 0 lifts one.
    shell_uid_base: int = Field(60_000, ge=1000, le=2_000_000_000)
    shell_cpu_s: int = Field(3600, ge=0)
    shell_memory_bytes: int = Field(1 << 30, ge=0)
    shell_open_files: int = Field(256, ge=0)
    shell_file_size_bytes: int = Field(64 << 20, ge=0)
    shell_max_processes: int = Field(512, ge=0)
    # Where each run's private working directory is made (unset: the system temp dir).
    shell_work_root: str | None = None

    # webhooks (docs/webhooks.md): delivered by the worker role
    # No answer within this long is a failed attempt.
    webhook_timeout_s: float = Field(15.0, gt=0, le=120)
    # Deliveries in flight per worker, and per endpoint per worker: a slow or dead receiver
    # holds at most webhook_endpoint_concurrency of a worker's slots.
    webhook_concurrency: int = Field(64, ge=1, le=4096)
    webhook_endpoint_concurrency: int = Field(8, ge=1, le=1024)
    # Deliveries per second a worker sends while its event loop lags (the process is out of
    # CPU): the jobs it runs come first, deliveries go on at this pace and catch up after.
    webhook_saturated_rate: float = Field(50.0, gt=0, le=100_000)
    # The bounded poll behind the NOTIFY wake-up (retries fall due without one).
    webhook_poll_s: float = Field(1.0, gt=0, le=60)

    @field_validator("secrets_key", "secrets_dir", "secrets_aws_region",
                     "secrets_aws_endpoint_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None

    @field_validator("secrets_key")
    @classmethod
    def _fernet_keys(cls, value: str | None) -> str | None:
        if value is not None:
            from jobsched.crypto import SecretBox  # cryptography loads only when used

            SecretBox.from_setting(value)  # raises SecretsKeyError (a ValueError) naming it
        return value

    @field_validator("http_allow_cidrs", "http_deny_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_cidrs(value)  # raises EgressError (a ValueError) naming the entry
        return tuple(v.strip() for v in value if v.strip())

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
            raise ValueError("must be 1-63 of a-z, 0-9, '_', '-', starting alphanumeric")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
        return tuple(item.strip() for item in value)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        return with_session_attrs(_check_postgres_url(value), "read-write")

    @field_validator("database_read_url")
    @classmethod
    def _postgres_read_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return with_session_attrs(_check_postgres_url(value), "prefer-standby")

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("zookeeper_hosts")
    @classmethod
    def _zk_hosts(cls, value: str) -> str:
        for host in value.split(","):
            if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", host.strip()):
                raise ValueError(f"{host!r} is not host:port")
        return value

    def kept_for_high(self, slots: int) -> int:
        """Of ``slots`` (a worker's run or shell slots), how many only high-priority runs
        may take (``worker_high_reserve``; normal and low always keep one)."""
        return min(int(slots * self.worker_high_reserve), slots - 1)

    @property
    def queue_name(self) -> str:
        """The queue of the normal band (the one queue of versions before priority)."""
        return f"jobsched.{self.cluster}.executions"

    @property
    def queue_names(self) -> dict[Priority, str]:
        """One queue per priority band."""
        return {Priority.HIGH: f"{self.queue_name}.high", Priority.NORMAL: self.queue_name,
                Priority.LOW: f"{self.queue_name}.low"}

    @property
    def dead_letter_exchange(self) -> str:
        return f"jobsched.{self.cluster}.dead"

    @property
    def dead_letter_queue(self) -> str:
        return f"jobsched.{self.cluster}.dead"

    @property
    def zookeeper_chroot(self) -> str:
        return f"/jobsched/{self.cluster}"

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.from_lists(self.http_allow_cidrs, self.http_deny_cidrs)

    def masked(self) -> dict[str, Any]:
        """The settings for the start-up log, with passwords in URLs masked."""
        shown = self.model_dump()
        for key in SECRET_FIELDS:
            if shown[key] is not None:
                shown[key] = mask_url(shown[key])
        for key in HIDDEN_FIELDS:
            if shown[key] is not None:
                shown[key] = "***"
        return shown


def _check_postgres_url(value: str) -> str:
    if urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL")
    return value


def with_session_attrs(url: str, attrs: str) -> str:
    """A URL naming several hosts gets ``target_session_attrs`` (unless it sets its own),
    so that connecting picks the right server of the group: the read-write primary for
    ``database_url`` (and, after a promotion, the new one), a standby for reads."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    query = parse_qsl(parts.query, keep_blank_values=True)
    if "," not in hosts or any(key == "target_session_attrs" for key, _ in query):
        return url
    query.append(("target_session_attrs", attrs))
    return urlunsplit(parts._replace(query=urlencode(query)))


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_LIST_FIELDS = frozenset({"imports", "disabled_kinds", "http_allow_cidrs", "http_deny_cidrs",
                          "trusted_proxies"})


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        values[name] = [m for m in raw.split(",") if m] if name in _LIST_FIELDS else raw
    return values


#: JOBSCHED_* variables that are not settings of a role: the client commands' and
#: --config's, and prefixes with warnings or uses of their own (tests, retired secrets).
NOT_SETTINGS = frozenset({"JOBSCHED_CONFIG", "JOBSCHED_URL", "JOBSCHED_TOKEN"})
NOT_SETTINGS_PREFIXES = ("JOBSCHED_TEST_", "JOBSCHED_SECRET_")


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``JOBSCHED_*`` variable that names no setting (a misspelling is
    otherwise ignored in silence), with the closest setting's variable when one is near."""
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    warnings = []
    for variable in sorted(environ):
        if (not variable.startswith(ENV_PREFIX) or variable in names
                or variable in NOT_SETTINGS or variable.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        close = difflib.get_close_matches(variable, sorted(names), n=1, cutoff=0.75)
        guess = f": did you mean {close[0]}?" if close else ""
        warnings.append(f"environment variable {variable} is not a jobsched setting and is "
                        f"ignored{guess}")
    return warnings


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
    section = data.get("jobsched", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [jobsched] must be a table")
    return section


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
) -> Settings:
    """Merge the four layers and validate once; a bad value raises ConfigError naming it."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    path = config_path or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if path:
        merged.update(_from_file(Path(path)))
    elif DEFAULT_CONFIG_PATH.is_file():
        merged.update(_from_file(DEFAULT_CONFIG_PATH))
    merged.update(_from_env(environ))
    merged.update(flags)
    try:
        return Settings.model_validate(merged, strict=False)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        env_name = ENV_PREFIX + key.upper()
        given = error.get("input")
        shown = "" if key in SECRET_FIELDS | HIDDEN_FIELDS else f" (got {given!r})"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(f"invalid setting {key} ({env_name}): {message}{shown}") from None
