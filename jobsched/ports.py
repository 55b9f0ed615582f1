"""The ports the roles talk to: small ``typing.Protocol`` interfaces, and the records and
errors that cross them. The adapters (``jobsched/adapters/``) implement them on
PostgreSQL, RabbitMQ and ZooKeeper; unit tests implement them in memory. Nothing here
imports an I/O library.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from jobsched.domain.firing import DueJob, FireRecord, TickPlan
from jobsched.domain.priority import Priority
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.messages import AttemptMessage

#: A row as the api reads it (jobs, executions, attempts): columns by name.
Row = Mapping[str, Any]
T = TypeVar("T")

# --- errors ------------------------------------------------------------------------------


class StaleEpochError(Exception):
    """This leader's epoch is no longer the current one: it must stop writing."""


class CandidacyLost(Exception):
    """The election znode went with an earlier ZooKeeper session: stand again."""


class QuotaExceeded(Exception):
    """The namespace already holds its quota of live (active or paused) jobs."""

    def __init__(self, namespace: str, quota: int) -> None:
        super().__init__(f"namespace {namespace!r} has {quota} live jobs, its quota")
        self.namespace = namespace
        self.quota = quota


class IdempotencyConflict(Exception):
    """The Idempotency-Key already names a job (or workflow) created from a different
    body."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"the key names {job_id}, created from a different body")
        self.job_id = job_id


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobColumns:
    """The columns of a job that its submitted spec determines (create and PATCH)."""

    name: str
    kind: str
    payload: dict[str, Any]
    schedule: str
    timezone: str
    next_fire_at: datetime
    max_attempts: int
    backoff_s: float
    max_backoff_s: float
    timeout_s: float
    labels: dict[str, str]
    spec: dict[str, Any]
    misfire: str
    max_catchup: int
    starting_deadline_s: float | None
    concurrency: str
    start_at: datetime | None
    end_at: datetime | None
    max_runs: int | None
    jitter_s: float
    keep_succeeded: int | None
    keep_failed: int | None
    priority: int  # Priority.rank


@dataclass(frozen=True, slots=True)
class Dispatch:
    """An execution attempt to put on the queue (the queue of its priority band)."""

    execution_id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    scheduled_for: datetime | None = None
    kind: str | None = None
    priority: Priority = Priority.NORMAL
    #: A new fire (its lateness is measured when it is confirmed), not a re-send or retry.
    fresh: bool = False

    def message(self) -> AttemptMessage:
        return AttemptMessage(self.execution_id, self.job_id, self.attempt,
                              self.scheduled_for, self.kind, self.priority)


@dataclass(frozen=True, slots=True)
class ClaimedExecution:
    """An attempt a worker has claimed (``queued → running`` with a lease), with what it
    needs to run it."""

    id: uuid.UUID
    job_id: uuid.UUID
    namespace: str
    attempt: int
    scheduled_for: datetime
    kind: str
    payload: dict[str, Any]
    timeout_s: float
    max_attempts: int
    backoff_s: float
    max_backoff_s: float
    concurrency: str
    starting_deadline_s: float | None
    priority: int = Priority.NORMAL.rank
    #: Attempts that do not count against max_attempts: lost with their worker, or
    #: handed back on a shutdown.
    uncounted_attempts: int = 0
    workflow_run_id: uuid.UUID | None = None  # set for the node of a workflow run

    @property
    def band(self) -> Priority:
        return Priority.from_rank(self.priority)


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """What a workflow node's function may be given: the run's ``input``, its parents'
    return values by key (``upstream``), and when its trigger rule let it run."""

    input: dict[str, Any]
    upstream: dict[str, Any]
    ready_at: datetime | None


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    execution_id: uuid.UUID
    attempt: int
    state: ExecutionState  # the execution's next state
    outcome: AttemptOutcome
    exit_code: int | None
    error: str | None
    output: str | None
    retry_in_s: float
    reason: str | None = None
    started_at: datetime | None = None  # when the run really began (after any hold)
    result: str | None = None  # a workflow node's return value as JSON text (None: none kept)
    workflow_run_id: uuid.UUID | None = None  # set for the node of a workflow run
    #: The execution's fire time: its day's partition (None: looked up by id).
    scheduled_for: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorkflowColumns:
    """The columns of a workflow that its submitted spec determines (create and PATCH)."""

    name: str
    schedule: str | None
    timezone: str
    next_fire_at: datetime | None
    misfire: str
    max_catchup: int
    concurrency: str
    labels: dict[str, str]
    spec: dict[str, Any]  # as submitted, without the nodes (each is its job row's spec)
    node_count: int


@dataclass(frozen=True, slots=True)
class WorkflowNodes:
    """A new version's nodes: their specs as submitted (after validation and defaults: each
    becomes a node's job row) and the graph, parents and children by position."""

    specs: list[dict[str, Any]]
    parents: list[tuple[int, ...]]
    children: list[tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A workflow to store: its columns, and its nodes when they are new (None: a PATCH
    that keeps the current version's nodes)."""

    columns: WorkflowColumns
    nodes: WorkflowNodes | None


@dataclass(frozen=True, slots=True)
class RunsFinished:
    """What the leader counts: runs in flight, and runs that ended in a window by state."""

    in_flight: int
    by_state: dict[str, int]


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A stored secret as key rotation sees it: the value stays sealed."""

    namespace: str
    name: str
    sealed: bytes


@dataclass(frozen=True, slots=True)
class ReapedExecution:
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    state: ExecutionState  # retrying or dead


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    epoch: int
    holder: str | None
    acquired_at: datetime | None


@dataclass
class LeaderTerm:
    """One uninterrupted leadership: its epoch and an event set when it ends."""

    epoch: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    instance: str
    sequence: int
    leader: bool


@dataclass(frozen=True, slots=True)
class EndpointColumns:
    """A webhook endpoint's columns that its owner sets (create and PATCH)."""

    url: str
    events: list[str]
    labels: dict[str, str]
    description: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A webhook delivery a worker has claimed (leased) for one attempt, with what it needs
    to send and sign it. ``attempt`` counts this one (1 for the first)."""

    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    data: dict[str, Any]
    created_at: datetime
    attempt: int
    url: str
    secret: bytes  # sealed
    previous_secret: bytes | None  # sealed; signs too while the rotation overlaps


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt went, to record on its delivery (if this worker still holds it)."""

    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    attempt: int
    state: str  # a DeliveryState
    next_attempt_at: datetime | None
    status: int | None
    error: str | None
    answer: str | None
    duration_ms: float
    gone: bool = False  # a 410: the endpoint is disabled with it


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    instance: str
    inflight: int
    prefetch: int | None


# --- PostgreSQL --------------------------------------------------------------------------


class JobRepository(Protocol):
    """What the api reads and writes."""

    async def ping(self) -> None: ...

    async def create_job(self, job_id: uuid.UUID, namespace: str, columns: JobColumns, *,
                         idempotency_key: str | None = None, digest: bytes | None = None,
                         idempotency_ttl_s: float = 86_400.0, quota: int = 0,
                         notify: bool = True) -> tuple[Row, bool]: ...

    async def update_job(self, job_id: uuid.UUID, namespace: str,
                         change: Callable[[Row], JobColumns]) -> Row | None: ...

    async def pause_job(self, job_id: uuid.UUID, namespace: str) -> bool: ...

    async def resume_job(
        self, job_id: uuid.UUID, namespace: str,
        plan: Callable[[Row], tuple[datetime | None, list[tuple[datetime, str]]]],
    ) -> str: ...

    async def trigger_job(self, job_id: uuid.UUID, now: datetime,
                          args: dict[str, Any] | None = None) -> Row | None:
        """A run now, once; ``args`` (python jobs) are merged over the job's own for it."""
        ...

    async def get_job(self, job_id: uuid.UUID, namespace: str) -> Row | None: ...

    async def list_jobs(self, namespace: str, *, state: str | None, name: str | None,
                        labels: dict[str, str] | None,
                        after: tuple[datetime, uuid.UUID] | None,
                        limit: int) -> list[Row]: ...

    async def cancel_job(self, job_id: uuid.UUID, namespace: str) -> bool: ...

    async def job_exists(self, job_id: uuid.UUID, namespace: str) -> bool: ...

    async def list_executions(self, job_id: uuid.UUID, *,
                              after: tuple[datetime, uuid.UUID] | None,
                              limit: int) -> list[Row]: ...

    async def list_dead(self, namespace: str, *, after: tuple[datetime, uuid.UUID] | None,
                        limit: int, job_id: uuid.UUID | None = None) -> list[Row]: ...

    async def redrive(self, execution_id: uuid.UUID, namespace: str, *,
                      refused_kinds: Sequence[str] = ()) -> Row | None: ...

    async def get_execution(self, execution_id: uuid.UUID,
                            namespace: str) -> tuple[Row, list[Row]] | None: ...

    async def current_leader(self) -> LeaderInfo | None: ...

    async def waiting_by_band(self) -> dict[Priority, int]:
        """Executions fired and not started yet (in the outbox, in a queue, or held by a
        worker), per priority band: a queue's depth in runs, where RabbitMQ counts
        messages of up to ``message_attempts`` runs each."""
        ...


class WorkflowRepository(Protocol):
    """What the api reads and writes about workflows and their runs."""

    async def create_workflow(self, workflow_id: uuid.UUID, namespace: str,
                              definition: WorkflowDefinition, *,
                              idempotency_key: str | None = None, digest: bytes | None = None,
                              idempotency_ttl_s: float = 86_400.0) -> tuple[Row, bool]: ...

    async def get_workflow(self, workflow_id: uuid.UUID, namespace: str) -> Row | None: ...

    async def list_workflows(self, namespace: str, *, state: str | None, name: str | None,
                             labels: dict[str, str] | None,
                             after: tuple[datetime, uuid.UUID] | None,
                             limit: int) -> list[Row]: ...

    async def update_workflow(self, workflow_id: uuid.UUID, namespace: str,
                              change: Callable[[Row], WorkflowDefinition]) -> Row | None: ...

    async def pause_workflow(self, workflow_id: uuid.UUID, namespace: str) -> bool: ...

    async def resume_workflow(
        self, workflow_id: uuid.UUID, namespace: str,
        plan: Callable[[Row], tuple[datetime | None, list[tuple[datetime, str]]]],
    ) -> str: ...

    async def cancel_workflow(self, workflow_id: uuid.UUID, namespace: str) -> bool: ...

    async def start_run(self, workflow_id: uuid.UUID, scheduled_for: datetime,
                        run_input: dict[str, Any]) -> uuid.UUID | None: ...

    async def get_run(self, run_id: uuid.UUID,
                      namespace: str) -> tuple[Row, list[Row]] | None: ...

    async def list_runs(self, workflow_id: uuid.UUID, *,
                        after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Row]: ...

    async def cancel_run(self, run_id: uuid.UUID, namespace: str) -> str | None: ...

    async def retry_run(self, run_id: uuid.UUID, namespace: str) -> str | None: ...


class WorkflowLeaderRepository(Protocol):
    """The leader's part of workflows: scheduled runs (fenced, like a job's fires), and
    what it counts and purges."""

    async def fire_due_workflows(self, epoch: int, now: datetime, limit: int,
                                 plan: Callable[[list[DueJob]], TickPlan],
                                 ) -> tuple[int, int, list[FireRecord]]: ...

    async def next_fire(self) -> datetime | None: ...

    async def runs_finished(self, since: datetime, until: datetime) -> RunsFinished: ...

    async def purge_runs(self, epoch: int, before: datetime, batch: int) -> int: ...


class ReadRouting(Protocol):
    """Where the api's read-only queries go (a read replica, with the primary behind it)."""

    async def read(self, query: Callable[[JobRepository], Awaitable[T]], *,
                   confirm_missing: bool = False) -> T: ...

    def describe(self) -> dict[str, Any]: ...


class TokenRepository(Protocol):
    async def create(self, digest: bytes, hint: str, namespace: str, role: str,
                     name: str | None, expires_at: datetime | None) -> Row: ...

    async def authenticate(self, digest: bytes) -> Row | None: ...

    async def list(self, namespace: str | None = None) -> list[Row]: ...

    async def revoke(self, token_id: uuid.UUID) -> Row | None: ...


class SecretReader(Protocol):
    """What a worker reads: the sealed values of names in one namespace (absent names are
    left out)."""

    async def sealed_secrets(self, namespace: str,
                             names: Sequence[str]) -> dict[str, bytes]: ...


class SecretRepository(SecretReader, Protocol):
    """Secrets of a namespace, stored sealed: the api writes and lists them (never their
    values), key rotation reseals them."""

    async def put_secret(self, namespace: str, name: str,
                         sealed: bytes) -> tuple[Row, bool]:
        """The secret's name and times, and whether it was created (not replaced)."""
        ...

    async def list_secrets(self, namespace: str, *, after: str | None,
                           limit: int) -> list[Row]: ...

    async def delete_secret(self, namespace: str, name: str) -> bool: ...

    async def sealed_batch(self, after: tuple[str, str], limit: int) -> list[SealedSecret]:
        """Every namespace's rows after ``(namespace, name)``, in that order."""
        ...

    async def reseal(self, secret: SealedSecret, new_sealed: bytes) -> bool:
        """Replace the value if it is still ``secret.sealed`` (a PUT meanwhile wins)."""
        ...


class LeaderRepository(Protocol):
    """The leader's writes: each fenced by its epoch (``StaleEpochError`` once deposed)."""

    async def claim_epoch(self, epoch: int, holder: str) -> bool: ...

    async def fire_due_jobs(self, epoch: int, now: datetime, limit: int,
                            plan: Callable[[list[DueJob]], TickPlan],
                            horizon: datetime | None = None,
                            ) -> tuple[list[Dispatch], int, list[FireRecord]]: ...

    async def requeue_retries(self, epoch: int, now: datetime,
                              limit: int) -> list[Dispatch]: ...

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None,
                             ) -> None: ...

    async def unpublished(self, queued_before: datetime, limit: int) -> list[Dispatch]: ...

    async def manual_unpublished(self, limit: int) -> list[Dispatch]: ...

    async def next_wake(self, lookahead_s: float = 0.0) -> datetime | None: ...

    async def reap_expired(self, epoch: int, limit: int,
                           lost_limit: int) -> list[ReapedExecution]: ...

    async def complete_finished_jobs(self, epoch: int, limit: int) -> int: ...

    async def ensure_partitions(self, epoch: int, now: datetime) -> list[str]: ...

    async def purge_history(self, epoch: int, before: datetime, batch: int) -> int: ...

    async def purge_deliveries(self, epoch: int, before: datetime, batch: int) -> int: ...


class WorkerRepository(Protocol):
    async def claim_executions(self, claims: Sequence[tuple[uuid.UUID, int]], worker: str,
                               lease_s: float,
                               scheduled_for: Sequence[datetime | None] | None = None,
                               ) -> list[ClaimedExecution]: ...

    async def finish_attempts(self, results: Sequence[FinishedAttempt],
                              worker: str) -> dict[uuid.UUID, ExecutionState]: ...

    async def hand_back(self, execution_id: uuid.UUID, attempt: int, worker: str,
                        scheduled_for: datetime | None = None) -> None: ...

    async def heartbeat(self, execution_ids: Sequence[uuid.UUID], worker: str,
                        lease_s: float,
                        scheduled_for: Sequence[datetime | None] | None = None,
                        ) -> set[uuid.UUID]: ...

    async def close_attempt(self, execution_id: uuid.UUID, attempt: int,
                            outcome: AttemptOutcome, error: str | None, output: str | None,
                            exit_code: int | None,
                            scheduled_for: datetime | None = None) -> None: ...

    async def stream_output(self, outputs: Sequence[tuple[uuid.UUID, int, str]],
                            worker: str) -> None:
        """Running attempts' output so far: (execution id, attempt, output)."""
        ...

    async def node_inputs(self, execution_ids: Sequence[uuid.UUID],
                          ) -> dict[uuid.UUID, NodeInputs]: ...

    async def finish_node_attempts(self, results: Sequence[FinishedAttempt], worker: str,
                                   ) -> tuple[dict[uuid.UUID, ExecutionState],
                                              list[Dispatch]]: ...

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None,
                             ) -> None: ...


class WebhookRepository(Protocol):
    """What the api reads and writes about webhook endpoints and their deliveries; every
    call is scoped to one namespace (another namespace's endpoint is "not found")."""

    async def create_endpoint(self, namespace: str, columns: EndpointColumns,
                              secret: bytes) -> Row: ...

    async def list_endpoints(self, namespace: str, *,
                             after: tuple[datetime, uuid.UUID] | None,
                             limit: int) -> list[Row]: ...

    async def get_endpoint(self, endpoint_id: uuid.UUID, namespace: str) -> Row | None: ...

    async def update_endpoint(self, endpoint_id: uuid.UUID, namespace: str,
                              change: Callable[[Row], EndpointColumns]) -> Row | None: ...

    async def delete_endpoint(self, endpoint_id: uuid.UUID, namespace: str) -> bool: ...

    async def rotate_secret(self, endpoint_id: uuid.UUID, namespace: str, secret: bytes,
                            overlap_s: float) -> Row | None: ...

    async def list_deliveries(self, endpoint_id: uuid.UUID, *, state: str | None,
                              after: tuple[datetime, uuid.UUID] | None,
                              limit: int) -> list[Row]: ...

    async def redeliver(self, endpoint_id: uuid.UUID, event_id: uuid.UUID) -> Row | None: ...

    async def get_delivery(self, endpoint_id: uuid.UUID,
                           event_id: uuid.UUID) -> Row | None: ...


class WebhookDeliveryStore(Protocol):
    """What the delivering workers do: lease due deliveries, record attempts."""

    async def claim_deliveries(self, worker: str, lease_s: float, *, limit: int,
                               per_endpoint: int,
                               free: Mapping[uuid.UUID, int]) -> list[DueDelivery]:
        """Up to ``limit`` due deliveries, at most ``free.get(endpoint, per_endpoint)``
        of each enabled endpoint, leased to ``worker`` for ``lease_s``."""
        ...

    async def record_attempts(self, results: Sequence[DeliveryResult],
                              worker: str) -> int:
        """Record the attempts this worker still holds (others are dropped); a ``gone``
        result disables its endpoint. Returns how many were recorded."""
        ...

    async def oldest_pending(self) -> datetime | None: ...


# --- RabbitMQ ----------------------------------------------------------------------------


class Delivery(Protocol):
    """One message handed to a consumer; it must be settled exactly once."""

    @property
    def body(self) -> bytes: ...

    async def ack(self) -> None: ...

    async def reject(self, requeue: bool = False) -> None: ...

    async def nack(self, requeue: bool = True) -> None: ...


class Broker(Protocol):
    @property
    def is_connected(self) -> bool: ...

    @property
    def reconnections(self) -> int:
        """Bumped on every reconnection: the leader re-publishes its outbox then."""
        ...

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]: ...

    async def publish_dead(self, messages: Sequence[AttemptMessage]) -> None: ...

    async def consume(self, on_delivery: Callable[[Delivery], Awaitable[None]],
                      prefetch: int) -> Callable[[], Awaitable[None]]: ...

    async def queue_stats(self) -> dict[str, QueueStats]: ...


# --- ZooKeeper ---------------------------------------------------------------------------


class Campaign(Protocol):
    """One scheduler's place in the leader election."""

    async def elected(self) -> LeaderTerm: ...

    async def resign(self) -> None: ...


class JobLock(Protocol):
    async def release(self) -> None: ...


class Coordinator(Protocol):
    """Ephemeral coordination: the election, per-job locks, the live worker registry."""

    def campaign(self, instance: str) -> Campaign: ...

    async def acquire_job_lock(self, job_id: uuid.UUID, timeout_s: float) -> JobLock | None:
        """The job's lock, or None if another holder kept it for ``timeout_s``."""
        ...

    async def stay_registered(self, instance: str, describe: Callable[[], bytes],
                              changed: Callable[[], bool], until: asyncio.Event) -> None: ...

    async def schedulers(self) -> list[SchedulerInfo]: ...

    async def workers(self) -> list[WorkerInfo]: ...

    async def check(self) -> str:
        """The session state if usable; raises ConnectionError otherwise (readiness)."""
        ...
