"""In-memory implementations of jobsched's ports (jobsched/ports.py), for unit tests of
the roles' own logic: ordering, fencing and decisions, without servers. They keep the
contracts the real adapters keep (a claim wins once; a stale epoch writes nothing) and
record what was asked of them, in order."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from jobsched.domain.firing import DueJob, FireRecord, TickPlan
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.messages import AttemptMessage
from jobsched.ports import (
    ClaimedExecution,
    Delivery,
    Dispatch,
    FinishedAttempt,
    LeaderTerm,
    NodeInputs,
    QueueStats,
    ReapedExecution,
    SchedulerInfo,
    StaleEpochError,
    WorkerInfo,
)


class Events:
    """One ordered log shared by the fakes of a test: ("commit", id), ("ack", id), ..."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def add(self, what: str, detail: Any = None) -> None:
        self.log.append((what, detail))

    def index(self, what: str, detail: Any = None) -> int:
        return self.log.index((what, detail))

    def count(self, what: str) -> int:
        return sum(1 for w, _ in self.log if w == what)


class FakeDelivery:
    def __init__(self, body: bytes, events: Events, label: Any) -> None:
        self._body = body
        self.events = events
        self.label = label
        self.settled = asyncio.Event()

    @property
    def body(self) -> bytes:
        return self._body

    def _settle(self, how: str) -> None:
        assert not self.settled.is_set(), f"{self.label} settled twice"
        self.events.add(how, self.label)
        self.settled.set()

    async def ack(self) -> None:
        self._settle("ack")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("reject" if not requeue else "requeue")

    async def nack(self, requeue: bool = True) -> None:
        self._settle("nack")


class FakeBroker:
    def __init__(self, events: Events | None = None) -> None:
        self.events = events or Events()
        self.published: list[AttemptMessage] = []
        self.dead: list[AttemptMessage] = []
        self._consumer: Callable[[Delivery], Awaitable[None]] | None = None
        self.consuming = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.confirm = True

    @property
    def is_connected(self) -> bool:
        return True

    @property
    def reconnections(self) -> int:
        return 0

    async def publish_many(self, messages: Sequence[AttemptMessage]) -> list[bool]:
        if self.confirm:
            self.published.extend(messages)
            for message in messages:
                self.events.add("publish", message.execution_id)
        return [self.confirm] * len(messages)

    async def publish_dead(self, messages: Sequence[AttemptMessage]) -> None:
        self.dead.extend(messages)

    async def consume(self, on_delivery: Callable[[Delivery], Awaitable[None]],
                      prefetch: int) -> Callable[[], Awaitable[None]]:
        self._consumer = on_delivery
        self.consuming.set()

        async def cancel() -> None:
            self._consumer = None

        return cancel

    def deliver(self, body: bytes, label: Any) -> FakeDelivery:
        """Hand one message to the consumer, as RabbitMQ would (each in its own task)."""
        assert self._consumer is not None, "nobody consumes"
        delivery = FakeDelivery(body, self.events, label)
        task = asyncio.create_task(self._consumer(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    async def queue_stats(self) -> dict[str, QueueStats]:
        return {}


@dataclasses.dataclass
class StoredExecution:
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    scheduled_for: datetime
    state: ExecutionState = ExecutionState.QUEUED
    worker: str | None = None
    epoch: int = -1
    workflow_run_id: uuid.UUID | None = None
    result: str | None = None


class FakeWorkerStore:
    """Executions a worker claims and records. ``commit_gate``, when set, holds every
    result write until the test opens it (to see what the worker does meanwhile)."""

    def __init__(self, events: Events, kind: str = "python",
                 payload: dict[str, Any] | None = None, max_attempts: int = 1) -> None:
        self.events = events
        self.kind = kind
        self.payload = payload or {}
        self.max_attempts = max_attempts
        self.executions: dict[uuid.UUID, StoredExecution] = {}
        self.commit_gate: asyncio.Event | None = None
        self.fail_commits = 0  # the next N result writes raise (a database outage)
        # Workflow nodes: what node_inputs answers, and the nodes a result queues.
        self.inputs: dict[uuid.UUID, NodeInputs] = {}
        self.queues: dict[uuid.UUID, list[Dispatch]] = {}
        self.published: list[uuid.UUID] = []
        self.concurrency = "allow"  # what claimed executions say of their job

    def add(self, execution: StoredExecution) -> StoredExecution:
        self.executions[execution.id] = execution
        return execution

    async def claim_executions(self, claims: Sequence[tuple[uuid.UUID, int]], worker: str,
                               lease_s: float,
                               scheduled_for: Sequence[datetime | None] | None = None,
                               ) -> list[ClaimedExecution]:
        won = []
        for execution_id, attempt in claims:
            row = self.executions.get(execution_id)
            if row is None or row.attempt != attempt or row.state != ExecutionState.QUEUED:
                continue
            row.state, row.worker = ExecutionState.RUNNING, worker
            self.events.add("claim", execution_id)
            won.append(ClaimedExecution(
                row.id, row.job_id, "default", row.attempt, row.scheduled_for, self.kind,
                self.payload,
                30.0, self.max_attempts, 0.01, 0.01, self.concurrency, None,
                workflow_run_id=row.workflow_run_id))
        return won

    async def finish_attempts(self, results: Sequence[FinishedAttempt],
                              worker: str) -> dict[uuid.UUID, ExecutionState]:
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        if self.fail_commits:
            self.fail_commits -= 1
            self.events.add("commit_failed", None)
            raise ConnectionError("database unreachable")
        held = {}
        for result in results:
            row = self.executions[result.execution_id]
            if row.worker == worker and row.state == ExecutionState.RUNNING:
                row.state = result.state
                held[row.id] = result.state
                self.events.add("commit", row.id)
        return held

    async def finish_node_attempts(self, results: Sequence[FinishedAttempt], worker: str,
                                   ) -> tuple[dict[uuid.UUID, ExecutionState], list[Dispatch]]:
        held = await self.finish_attempts(results, worker)
        queued: list[Dispatch] = []
        for result in results:
            if result.execution_id in held:
                self.executions[result.execution_id].result = result.result
                if result.state == ExecutionState.SUCCEEDED:
                    queued += self.queues.get(result.execution_id, [])
        return held, queued

    async def node_inputs(self, execution_ids: Sequence[uuid.UUID],
                          ) -> dict[uuid.UUID, NodeInputs]:
        self.events.add("node_inputs", tuple(execution_ids))
        return {i: self.inputs[i] for i in execution_ids if i in self.inputs}

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        self.published.extend(execution_ids)
        for execution_id in execution_ids:
            self.events.add("mark_published", execution_id)

    async def hand_back(self, execution_id: uuid.UUID, attempt: int, worker: str,
                        scheduled_for: datetime | None = None) -> None:
        self.events.add("hand_back", execution_id)

    async def heartbeat(self, execution_ids: Sequence[uuid.UUID], worker: str,
                        lease_s: float,
                        scheduled_for: Sequence[datetime | None] | None = None,
                        ) -> set[uuid.UUID]:
        return {i for i in execution_ids if self.executions[i].worker == worker}

    async def close_attempt(self, execution_id: uuid.UUID, attempt: int,
                            outcome: AttemptOutcome, error: str | None, output: str | None,
                            exit_code: int | None,
                            scheduled_for: datetime | None = None) -> None:
        self.events.add("close_attempt", execution_id)

    async def stream_output(self, outputs: Sequence[tuple[uuid.UUID, int, str]],
                            worker: str) -> None:
        for execution_id, _, output in outputs:
            self.events.add("stream_output", (execution_id, output))


class FakeLeaderStore:
    """Due jobs and the executions the leader records. Writes are fenced like the real
    store's: only the newest claimed epoch may write; a stale one raises and changes
    nothing."""

    def __init__(self, jobs: Sequence[DueJob] = ()) -> None:
        self.epoch = -1
        self.jobs: dict[uuid.UUID, DueJob] = {j.id: j for j in jobs}
        self.fires: list[tuple[int, FireRecord]] = []  # (epoch, fire) in write order
        self.published: list[uuid.UUID] = []
        self.stale_attempts = 0

    def _fence(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.stale_attempts += 1
            raise StaleEpochError(f"epoch {epoch} superseded by {self.epoch}")

    async def claim_epoch(self, epoch: int, holder: str) -> bool:
        if epoch <= self.epoch:
            return False
        self.epoch = epoch
        return True

    async def fire_due_jobs(self, epoch: int, now: datetime, limit: int,
                            plan: Callable[[list[DueJob]], TickPlan],
                            horizon: datetime | None = None,
                            ) -> tuple[list[Dispatch], int, list[FireRecord]]:
        self._fence(epoch)
        due = sorted((j for j in self.jobs.values()
                      if j.next_fire_at <= (horizon or now)),
                     key=lambda j: j.next_fire_at)[:limit]
        if not due:
            return [], 0, []
        tick = plan(due)
        seen = {(f.job_id, f.scheduled_for) for _, f in self.fires}
        dispatches = []
        for fire in tick.fires:
            if (fire.job_id, fire.scheduled_for) in seen:
                continue  # the unique key: a repeated fire is a no-op
            seen.add((fire.job_id, fire.scheduled_for))
            self.fires.append((epoch, fire))
            if fire.state == ExecutionState.QUEUED:
                dispatches.append(Dispatch(uuid.uuid4(), fire.job_id, 1, fire.scheduled_for,
                                           fresh=True))
        for advance in tick.advances:
            job = self.jobs[advance.job_id]
            if advance.next_fire_at is None:
                del self.jobs[advance.job_id]
            else:
                self.jobs[advance.job_id] = dataclasses.replace(
                    job, next_fire_at=advance.next_fire_at,
                    run_count=job.run_count + advance.runs)
        not_run = [f for f in tick.fires if f.state != ExecutionState.QUEUED]
        return dispatches, len(due), not_run

    async def requeue_retries(self, epoch: int, now: datetime, limit: int) -> list[Dispatch]:
        self._fence(epoch)
        return []

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        self.published.extend(execution_ids)

    async def unpublished(self, queued_before: datetime, limit: int) -> list[Dispatch]:
        return []

    async def manual_unpublished(self, limit: int) -> list[Dispatch]:
        return []

    async def next_wake(self, lookahead_s: float = 0.0) -> datetime | None:
        return min((j.next_fire_at for j in self.jobs.values()), default=None)

    async def reap_expired(self, epoch: int, limit: int,
                           lost_limit: int) -> list[ReapedExecution]:
        self._fence(epoch)
        return []

    async def complete_finished_jobs(self, epoch: int, limit: int) -> int:
        self._fence(epoch)
        return 0

    async def ensure_partitions(self, epoch: int, now: datetime) -> list[str]:
        self._fence(epoch)
        return []

    async def purge_history(self, epoch: int, before: datetime, batch: int) -> int:
        self._fence(epoch)
        return 0

    async def purge_deliveries(self, epoch: int, before: datetime, batch: int) -> int:
        self._fence(epoch)
        return 0


class FakeCampaign:
    """Elected as soon as the test allows (``allow``), with the epochs given in turn."""

    def __init__(self, epochs: Sequence[int]) -> None:
        self.epochs = list(epochs)
        self.allow = asyncio.Event()
        self.allow.set()
        self.terms: list[LeaderTerm] = []
        self.resigned = 0

    async def elected(self) -> LeaderTerm:
        if not self.epochs:
            await asyncio.Event().wait()  # no further term in this test
        await self.allow.wait()
        term = LeaderTerm(self.epochs.pop(0))
        self.terms.append(term)
        return term

    async def resign(self) -> None:
        self.resigned += 1


class FakeCoordinator:
    def __init__(self, campaign: FakeCampaign | None = None) -> None:
        self._campaign = campaign or FakeCampaign([1])

    def campaign(self, instance: str) -> FakeCampaign:
        return self._campaign

    async def acquire_job_lock(self, job_id: uuid.UUID, timeout_s: float) -> None:
        return None

    async def stay_registered(self, instance: str, describe: Callable[[], bytes],
                              changed: Callable[[], bool], until: asyncio.Event) -> None:
        await until.wait()

    async def schedulers(self) -> list[SchedulerInfo]:
        return []

    async def workers(self) -> list[WorkerInfo]:
        return []

    async def check(self) -> str:
        return "CONNECTED"


class FakeWebhookStore:
    """``WebhookDeliveryStore`` in memory: due deliveries per endpoint, claimed up to the
    free slots asked for (as claim_deliveries does), results recorded in order."""

    def __init__(self) -> None:
        self.due: dict[uuid.UUID, list[Any]] = {}
        self.claims: list[dict[str, Any]] = []
        self.recorded: list[Any] = []

    def add(self, delivery: Any) -> None:
        self.due.setdefault(delivery.endpoint_id, []).append(delivery)

    async def claim_deliveries(self, worker: str, lease_s: float, *, limit: int,
                               per_endpoint: int, free: dict[uuid.UUID, int]) -> list[Any]:
        self.claims.append({"limit": limit, "free": dict(free)})
        taken: list[Any] = []
        for endpoint, queue in self.due.items():
            slots = free.get(endpoint, per_endpoint)
            while queue and slots > 0 and len(taken) < limit:
                taken.append(queue.pop(0))
                slots -= 1
        return taken

    async def record_attempts(self, results: Sequence[Any], worker: str) -> int:
        self.recorded.extend(results)
        return len(results)

    async def oldest_pending(self) -> datetime | None:
        return None
