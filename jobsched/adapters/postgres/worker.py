"""The worker's repository on PostgreSQL (``jobsched.ports.WorkerRepository``): claims,
lease renewals and results, each one statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg

from jobsched.adapters.postgres.listen import WAKE_CHANNEL
from jobsched.adapters.postgres.sql import load_queries
from jobsched.domain.execution_ids import batch_window
from jobsched.domain.priority import Priority
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.ports import ClaimedExecution, Dispatch, FinishedAttempt, NodeInputs

Q = load_queries("worker.sql")
WORKFLOWS = load_queries("workflows.sql")
LEADER = load_queries("leader.sql")

T = TypeVar("T")


class PostgresWorkerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim_executions(self, claims: Sequence[tuple[uuid.UUID, int]], worker: str,
                               lease_s: float,
                               scheduled_for: Sequence[datetime | None] | None = None,
                               ) -> list[ClaimedExecution]:
        """``scheduled_for``: each claim's fire time where known (the message's due time),
        so that its row is read in its own day's partition; None looks it up."""
        async with self.pool.acquire() as conn:
            claims, days, earliest, latest = await in_id_order(
                conn, claims, lambda claim: claim[0], scheduled_for)
            rows = await Q.claim_executions.fetch(
                conn, ids=[c[0] for c in claims], attempts=[c[1] for c in claims],
                scheduled_for=days, earliest=earliest, latest=latest, worker=worker,
                lease_s=lease_s)
        # By position: claim_executions selects ClaimedExecution's fields in their order
        # (tests/integration/test_worker_store.py checks it); no dict per row.
        return [ClaimedExecution(*r) for r in rows]

    async def hand_back(self, execution_id: uuid.UUID, attempt: int, worker: str,
                        scheduled_for: datetime | None = None) -> None:
        """``scheduled_for``: the run's fire time where known (its partition, exactly),
        else the id's millisecond of it bounds the lookup."""
        lo, hi = batch_window([execution_id], [scheduled_for])
        async with self.pool.acquire() as conn, conn.transaction():
            await Q.hand_back.execute(conn, id=execution_id, attempt=attempt, worker=worker,
                                      lo=lo, hi=hi)
            await Q.wake.execute(conn, channel=WAKE_CHANNEL, payload="retry")

    async def finish_attempts(self, results: Sequence[FinishedAttempt],
                              worker: str) -> dict[uuid.UUID, ExecutionState]:
        """Record a batch of results; returns the executions this worker still held."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await _finish(conn, results, worker)
        return {r["id"]: ExecutionState(r["state"]) for r in rows}

    async def heartbeat(self, execution_ids: Sequence[uuid.UUID], worker: str,
                        lease_s: float,
                        scheduled_for: Sequence[datetime | None] | None = None) -> set[uuid.UUID]:
        """Extend the leases in one statement; returns the ids still held.
        ``scheduled_for``: each one's fire time where known (its partition), else None."""
        async with self.pool.acquire() as conn:
            ids, days, earliest, latest = await in_id_order(conn, execution_ids, lambda i: i,
                                                            scheduled_for)
            rows = await Q.heartbeat.fetch(conn, ids=ids, scheduled_for=days, earliest=earliest,
                                           latest=latest, worker=worker, lease_s=lease_s)
        return {r["id"] for r in rows}

    async def close_attempt(self, execution_id: uuid.UUID, attempt: int,
                            outcome: AttemptOutcome, error: str | None, output: str | None,
                            exit_code: int | None,
                            scheduled_for: datetime | None = None) -> None:
        """``scheduled_for``: as for hand_back."""
        lo, hi = batch_window([execution_id], [scheduled_for])
        await Q.close_attempt.execute(self.pool, execution_id=execution_id, attempt=attempt,
                                      outcome=str(outcome), error=error, output=output,
                                      exit_code=exit_code, lo=lo, hi=hi)

    async def stream_output(self, outputs: Sequence[tuple[uuid.UUID, int, str]],
                            worker: str) -> None:
        """Write running attempts' output so far, in one statement."""
        outputs = sorted(outputs)
        lo, hi = batch_window(o[0] for o in outputs)
        await Q.stream_output.execute(self.pool, ids=[o[0] for o in outputs],
                                      attempts=[o[1] for o in outputs],
                                      outputs=[o[2] for o in outputs], worker=worker,
                                      lo=lo, hi=hi)

    async def node_inputs(self, execution_ids: Sequence[uuid.UUID],
                          ) -> dict[uuid.UUID, NodeInputs]:
        """What workflow nodes' functions may ask for (their run's input, their parents'
        return values), read once the node is claimed: after every parent committed."""
        lo, hi = batch_window(execution_ids)
        rows = await WORKFLOWS.node_inputs.fetch(self.pool, ids=list(execution_ids),
                                                 lo=lo, hi=hi)
        return {r["id"]: NodeInputs(r["input"], r["upstream"], r["ready_at"]) for r in rows}

    async def finish_node_attempts(self, results: Sequence[FinishedAttempt], worker: str,
                                   ) -> tuple[dict[uuid.UUID, ExecutionState], list[Dispatch]]:
        """Record a batch of results that holds workflow nodes: their return values, then
        the results as finish_attempts does (the trigger on executions moves their runs
        on). Returns the executions this worker still held, and the nodes these results
        queued, for this worker to publish once committed (see workflow_advance)."""
        results = sorted(results, key=lambda r: r.execution_id)  # rows locked in id order
        async with self.pool.acquire() as conn, conn.transaction():
            kept = [r for r in results if r.result is not None]
            lo, hi = batch_window([r.execution_id for r in kept],
                                  [r.scheduled_for for r in kept])
            await WORKFLOWS.record_results.execute(
                conn, ids=[r.execution_id for r in kept], attempts=[r.attempt for r in kept],
                results=[r.result for r in kept], worker=worker, lo=lo, hi=hi)
            rows = await _finish(conn, results, worker)
            queued = await WORKFLOWS.nodes_queued_here.fetchval(conn)
        held = {r["id"]: ExecutionState(r["state"]) for r in rows}
        return held, _queued_nodes(queued)

    async def mark_published(self, execution_ids: Sequence[uuid.UUID],
                             scheduled_for: Sequence[datetime | None] | None = None,
                             attempts: Sequence[int | None] | None = None) -> None:
        """Nodes this worker published: out of the outbox the leader sweeps."""
        if execution_ids:
            await mark_published(self.pool, execution_ids, scheduled_for, attempts)


def _queued_nodes(listed: str | None) -> list[Dispatch]:
    """The 'id job_id attempt priority kind scheduled_for' items workflow_advance listed,
    as messages to publish (each to the queue of its node's band)."""
    dispatches = []
    for item in (listed or "").split(","):
        if item:
            execution_id, job_id, attempt, rank, kind, scheduled = item.split(" ")
            dispatches.append(Dispatch(
                uuid.UUID(execution_id), uuid.UUID(job_id), int(attempt),
                datetime.fromtimestamp(float(scheduled), UTC), kind,
                Priority.from_rank(int(rank))))
    return dispatches


async def in_id_order(conn: asyncpg.Connection, items: Sequence[T],
                      execution_id: Callable[[T], uuid.UUID],
                      scheduled_for: Sequence[datetime | None] | None,
                      ) -> tuple[list[T], list[datetime | None], datetime | None, datetime | None]:
    """A batch for one multi-row write: its items in execution id order (every such write
    locks rows in id order: no deadlock), each one's scheduled_for (its day partition) as
    given or, where not (a message of a version before 014, a caller that does not know
    it), looked up; and the batch's earliest and latest, which prune the other days."""
    given = list(scheduled_for) if scheduled_for is not None else [None] * len(items)
    batch = sorted(zip(items, given, strict=True), key=lambda pair: execution_id(pair[0]))
    ordered = [item for item, _ in batch]
    known = [day for _, day in batch]
    missing = [execution_id(item) for item, day in batch if day is None]
    if missing:
        lo, hi = batch_window(missing)
        found = {r["id"]: r["scheduled_for"]
                 for r in await Q.execution_days.fetch(conn, ids=missing, lo=lo, hi=hi)}
        known = [day if day is not None else found.get(execution_id(item))
                 for item, day in batch]
    present = [day for day in known if day is not None]
    return ordered, known, min(present, default=None), max(present, default=None)


async def _finish(conn: asyncpg.Connection, results: Sequence[FinishedAttempt],
                  worker: str) -> list[asyncpg.Record]:
    """A batch of results recorded (in the caller's transaction): the executions this
    worker still held."""
    results, days, earliest, latest = await in_id_order(
        conn, results, lambda r: r.execution_id, [r.scheduled_for for r in results])
    rows = await Q.finish_executions.fetch(
        conn,
        earliest=earliest,
        latest=latest,
        ids=[r.execution_id for r in results],
        attempts=[r.attempt for r in results],
        states=[str(r.state) for r in results],
        outcomes=[str(r.outcome) for r in results],
        exit_codes=[r.exit_code for r in results],
        errors=[r.error for r in results],
        outputs=[r.output for r in results],
        retry_in_s=[r.retry_in_s for r in results],
        worker=worker,
        reasons=[r.reason for r in results],
        started_at=[r.started_at for r in results],
        scheduled_for=days,
    )
    if any(r.state == ExecutionState.RETRYING for r in results):
        await Q.wake.execute(conn, channel=WAKE_CHANNEL, payload="retry")
    return list(rows)


async def mark_published(pool: asyncpg.Pool, execution_ids: Sequence[uuid.UUID],
                         scheduled_for: Sequence[datetime | None] | None,
                         attempts: Sequence[int | None] | None = None) -> None:
    """Out of the outbox: executions confirmed by RabbitMQ (``scheduled_for``: each one's
    fire time where known, its day partition; ``attempts``: the attempt each message
    carried, where known)."""
    given = list(attempts) if attempts is not None else [None] * len(execution_ids)
    async with pool.acquire() as conn:
        pairs, days, earliest, latest = await in_id_order(
            conn, list(zip(execution_ids, given, strict=True)), lambda p: p[0], scheduled_for)
        await LEADER.mark_published.execute(conn, ids=[i for i, _ in pairs], scheduled_for=days,
                                            attempts=[a for _, a in pairs],
                                            earliest=earliest, latest=latest)
