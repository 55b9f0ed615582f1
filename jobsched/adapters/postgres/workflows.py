"""Workflows on PostgreSQL: the api's repository (``jobsched.ports.WorkflowRepository``) and
the leader's (``WorkflowLeaderRepository``). Runs start, advance, are cancelled and retried
by the SQL functions of migrations/012_workflows.sql; this module calls them and reads
around them."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from jobsched.adapters.postgres.listen import WAKE_CHANNEL
from jobsched.adapters.postgres.pool import fenced
from jobsched.adapters.postgres.sql import load_queries
from jobsched.domain.firing import DueJob, FireRecord, TickPlan
from jobsched.domain.states import ExecutionState
from jobsched.domain.workflows import PRIORITY_RANKS, one_run_at_a_time
from jobsched.ports import (
    IdempotencyConflict,
    Row,
    RunsFinished,
    WorkflowDefinition,
    WorkflowNodes,
)

log = logging.getLogger(__name__)

Q = load_queries("workflows.sql")
JOBS = load_queries("jobs.sql")

#: How often a cancel is tried again when a node was queued while it ran.
CANCEL_TRIES = 20
REPLACED_REASON = "replaced by a newer fire (concurrency=replace)"


def _row(record: Any) -> Row | None:
    return dict(record) if record is not None else None


def _int_array(values: tuple[int, ...]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


async def _insert_version(conn: asyncpg.Connection, workflow_id: uuid.UUID, namespace: str,
                          name: str, version: int, nodes: WorkflowNodes) -> None:
    """A version's nodes: their job rows and the graph, one statement whatever the size."""
    await Q.insert_version.execute(
        conn, namespace=namespace, workflow_id=workflow_id, name=name, version=version,
        specs=nodes.specs, parents=[_int_array(p) for p in nodes.parents],
        children=[_int_array(c) for c in nodes.children], priority_ranks=PRIORITY_RANKS)


async def _with_nodes(conn: asyncpg.Connection, record: Any) -> Row | None:
    """A workflow row with its current version's node specs, in order, as ``nodes``."""
    if record is None:
        return None
    specs = await Q.node_specs.fetch(conn, workflow_id=record["id"], version=record["version"])
    return {**dict(record), "nodes": [r["spec"] for r in specs]}


T = TypeVar("T")


async def _retry_cancel(cancel: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction that cancels runs, again if a node was queued while it ran
    (workflow_cancel_runs raises serialization_failure rather than wait holding the runs).
    The tries are a short jittered pause apart, doubling to 0.25 s: tried again at once,
    a cancel racing a worker that ends one parent after another (each queueing a child)
    lost 20 times in a row on a loaded machine."""
    pause = 0.005
    for attempt in range(1, CANCEL_TRIES + 1):
        try:
            return await cancel()
        except asyncpg.SerializationError:
            if attempt == CANCEL_TRIES:
                raise
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 0.25)
    raise AssertionError("unreachable")


async def _cancel_runs(conn: asyncpg.Connection, run_ids: list[uuid.UUID], reason: str) -> int:
    """Cancel running runs inside the caller's transaction (see workflow_cancel_runs)."""
    if not run_ids:
        return 0
    return int(await Q.cancel_runs.fetchval(conn, run_ids=run_ids, reason=reason))


class PostgresWorkflows:
    """The api's workflows (``jobsched.ports.WorkflowRepository``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_workflow(self, workflow_id: uuid.UUID, namespace: str,
                              definition: WorkflowDefinition, *,
                              idempotency_key: str | None = None, digest: bytes | None = None,
                              idempotency_ttl_s: float = 86_400.0) -> tuple[Row, bool]:
        """Store a workflow and its first version in one transaction; with an idempotency
        key, a repeat of an identical create answers the first workflow instead."""
        columns = definition.columns
        assert definition.nodes is not None
        async with self.pool.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                if first is not None:
                    return first, True
            row = await Q.insert_workflow.fetchrow(
                conn, id=workflow_id, namespace=namespace, name=columns.name,
                schedule=columns.schedule, timezone=columns.timezone,
                next_fire_at=columns.next_fire_at, misfire=columns.misfire,
                max_catchup=columns.max_catchup, concurrency=columns.concurrency,
                node_count=columns.node_count, labels=columns.labels, spec=columns.spec,
                idempotency_key=idempotency_key, idempotency_digest=digest)
            if row is None:  # a concurrent create with this key won the race
                assert idempotency_key is not None
                first = await self._replay(conn, namespace, idempotency_key, digest,
                                           idempotency_ttl_s)
                assert first is not None
                return first, True
            await _insert_version(conn, workflow_id, namespace, columns.name, 1,
                                  definition.nodes)
            if columns.next_fire_at is not None:
                await JOBS.notify.execute(conn, channel=WAKE_CHANNEL, payload="workflow")
        return {**dict(row), "last_run": None, "nodes": definition.nodes.specs}, False

    @staticmethod
    async def _replay(conn: asyncpg.Connection, namespace: str, key: str,
                      digest: bytes | None, ttl_s: float) -> Row | None:
        found = await Q.workflow_by_idempotency_key.fetchrow(conn, namespace=namespace,
                                                             key=key, ttl_s=ttl_s)
        if found is None:
            return None
        if found["expired"]:
            await Q.release_idempotency_key.execute(conn, id=found["id"], ttl_s=ttl_s)
            return None
        if found["idempotency_digest"] != digest:
            raise IdempotencyConflict(found["id"])
        return await _with_nodes(conn, await Q.get_workflow.fetchrow(
            conn, id=found["id"], namespace=namespace))

    async def get_workflow(self, workflow_id: uuid.UUID, namespace: str) -> Row | None:
        """One workflow with the nodes of its current version (``nodes``)."""
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):  # one snapshot
            return await _with_nodes(conn, await Q.get_workflow.fetchrow(
                conn, id=workflow_id, namespace=namespace))

    async def list_workflows(self, namespace: str, *, state: str | None, name: str | None,
                             labels: dict[str, str] | None,
                             after: tuple[datetime, uuid.UUID] | None,
                             limit: int) -> list[Row]:
        after_at, after_id = after if after else (None, None)
        rows = await Q.list_workflows.fetch(self.pool, namespace=namespace, state=state,
                                            name=name, labels=labels, after_at=after_at,
                                            after_id=after_id, limit=limit)
        return [dict(r) for r in rows]

    async def update_workflow(self, workflow_id: uuid.UUID, namespace: str,
                              change: Callable[[Row], WorkflowDefinition]) -> Row | None:
        """Read-modify-write one workflow under its row lock. New nodes make a new version
        (new runs use it; runs already started keep theirs). None if there is none."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _with_nodes(conn, await Q.lock_workflow.fetchrow(
                conn, id=workflow_id, namespace=namespace))
            if row is None:
                return None
            definition = change(row)
            columns = definition.columns
            version = row["version"]
            if definition.nodes is not None:
                version += 1
                await _insert_version(conn, workflow_id, namespace, columns.name, version,
                                      definition.nodes)
            await Q.update_workflow.execute(
                conn, id=workflow_id, name=columns.name, schedule=columns.schedule,
                timezone=columns.timezone, next_fire_at=columns.next_fire_at,
                misfire=columns.misfire, max_catchup=columns.max_catchup,
                concurrency=columns.concurrency, node_count=columns.node_count,
                labels=columns.labels, spec=columns.spec, version=version)
            await JOBS.notify.execute(conn, channel=WAKE_CHANNEL, payload="workflow")
        return await self.get_workflow(workflow_id, namespace)

    async def pause_workflow(self, workflow_id: uuid.UUID, namespace: str) -> bool:
        return await Q.pause_workflow.fetchval(self.pool, id=workflow_id,
                                               namespace=namespace) is not None

    async def resume_workflow(
        self, workflow_id: uuid.UUID, namespace: str,
        plan: Callable[[Row], tuple[datetime | None, list[tuple[datetime, str]]]],
    ) -> str:
        """Resume a paused workflow: ``plan`` gives its next fire and the skipped fires to
        record. Returns 'resumed', 'not_paused' or 'missing'."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.lock_workflow.fetchrow(conn, id=workflow_id, namespace=namespace)
            if row is None:
                return "missing"
            if row["state"] != "paused":
                return "not_paused"
            next_fire_at, skipped = plan(dict(row))
            if skipped:
                await Q.record_run.execute(
                    conn, epoch=-1, workflow_ids=[workflow_id] * len(skipped),
                    scheduled_for=[at for at, _ in skipped],
                    states=["skipped"] * len(skipped), reasons=[r for _, r in skipped])
            await Q.resume_workflow.execute(conn, id=workflow_id, next_fire_at=next_fire_at)
            await JOBS.notify.execute(conn, channel=WAKE_CHANNEL, payload="workflow")
        return "resumed"

    async def cancel_workflow(self, workflow_id: uuid.UUID, namespace: str) -> bool:
        """No new runs; running ones cancelled. False if it was not active or paused."""
        async def cancel() -> bool:
            async with self.pool.acquire() as conn, conn.transaction():
                moved = await Q.cancel_workflow.fetchval(conn, id=workflow_id,
                                                         namespace=namespace)
                runs = await Q.running_runs.fetchval(conn, workflow_ids=[workflow_id])
                await _cancel_runs(conn, list(runs), "workflow cancelled")
            return moved is not None

        return await _retry_cancel(cancel)

    async def start_run(self, workflow_id: uuid.UUID, scheduled_for: datetime,
                        run_input: dict[str, Any]) -> uuid.UUID | None:
        """A run started by hand (epoch -1: the leader publishes its first nodes on its
        next tick, woken by the NOTIFY of workflow_advance). None if a run of that very
        time exists."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await Q.start_runs.fetchrow(conn, workflow_ids=[workflow_id],
                                              scheduled_for=[scheduled_for],
                                              reasons=["started by hand"], input=run_input,
                                              epoch=-1)
        run_id: uuid.UUID | None = row["run_id"] if row is not None else None
        return run_id

    async def get_run(self, run_id: uuid.UUID,
                      namespace: str) -> tuple[Row, list[Row]] | None:
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):  # one snapshot
            run = await Q.get_run.fetchrow(conn, id=run_id, namespace=namespace)
            if run is None:
                return None
            nodes = await Q.run_nodes.fetch(conn, run_id=run_id)
        return dict(run), [dict(n) for n in nodes]

    async def list_runs(self, workflow_id: uuid.UUID, *,
                        after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Row]:
        rows = await Q.list_runs.fetch(self.pool, workflow_id=workflow_id,
                                       after_at=after[0] if after else None, limit=limit)
        return [dict(r) for r in rows]

    async def cancel_run(self, run_id: uuid.UUID, namespace: str) -> str | None:
        """Cancel a running run; returns its state before (None: no such run)."""
        async def cancel() -> str | None:
            async with self.pool.acquire() as conn, conn.transaction():
                state: str | None = await Q.run_in_namespace.fetchval(
                    conn, id=run_id, namespace=namespace)
                if state == "running":
                    await _cancel_runs(conn, [run_id], "run cancelled")
            return state

        return await _retry_cancel(cancel)

    async def retry_run(self, run_id: uuid.UUID, namespace: str) -> str | None:
        """Run again what failed; returns the run's state before (None: no such run)."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await Q.run_in_namespace.fetchval(conn, id=run_id, namespace=namespace)
            if state is None:
                return None
            before: str | None = await Q.retry_run.fetchval(conn, id=run_id)
        return before


class PostgresWorkflowLeader:
    """The leader's workflows (``jobsched.ports.WorkflowLeaderRepository``): every write
    fenced by its epoch, as its job fires are."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fire_due_workflows(self, epoch: int, now: datetime, limit: int,
                                 plan: Callable[[list[DueJob]], TickPlan],
                                 ) -> tuple[int, int, list[FireRecord]]:
        """Start the runs of due workflows (misfire and concurrency applied by ``plan``,
        as for jobs) and advance them, in one fenced transaction: one run per scheduled
        time (a unique key), and a run's first nodes committed with it. Returns runs
        started, workflows selected, and the fires recorded as not run."""
        # concurrency=replace met a node queued meanwhile: the tick again
        return await _retry_cancel(lambda: self._fire(epoch, now, limit, plan))

    async def _fire(self, epoch: int, now: datetime, limit: int,
                    plan: Callable[[list[DueJob]], TickPlan],
                    ) -> tuple[int, int, list[FireRecord]]:
        async with fenced(self.pool, epoch) as conn:
            rows = await Q.select_due_workflows.fetch(conn, now=now, limit=limit)
            if not rows:
                return 0, 0, []
            tick = plan([DueJob(**dict(r)) for r in rows])
            if tick.replace:
                runs = await Q.running_runs.fetchval(conn, workflow_ids=tick.replace)
                await _cancel_runs(conn, list(runs), REPLACED_REASON)
            fires = one_run_at_a_time(tick.fires, {r["id"]: r["concurrency"] for r in rows})
            queued = [f for f in fires if f.state == ExecutionState.QUEUED]
            not_run = [f for f in fires if f.state != ExecutionState.QUEUED]
            started = 0
            if queued:
                created = await Q.start_runs.fetch(
                    conn, workflow_ids=[f.job_id for f in queued],
                    scheduled_for=[f.scheduled_for for f in queued],
                    reasons=[f.reason for f in queued], input={}, epoch=epoch)
                started = sum(1 for r in created if r["run_id"] is not None)
            if not_run:
                await Q.record_run.execute(
                    conn, epoch=epoch, workflow_ids=[f.job_id for f in not_run],
                    scheduled_for=[f.scheduled_for for f in not_run],
                    states=[str(f.state) for f in not_run], reasons=[f.reason for f in not_run])
            advances = sorted(tick.advances, key=lambda a: a.job_id)
            await Q.advance_workflows.execute(
                conn, ids=[a.job_id for a in advances],
                next_fire_at=[a.next_fire_at for a in advances],
                runs=[a.runs for a in advances])
        return started, len(rows), not_run

    async def next_fire(self) -> datetime | None:
        wake_at: datetime | None = await Q.next_fire.fetchval(self.pool)
        return wake_at

    async def runs_finished(self, since: datetime, until: datetime) -> RunsFinished:
        async with self.pool.acquire() as conn:
            in_flight = await Q.runs_in_flight.fetchval(conn)
            rows = await Q.runs_finished.fetch(conn, since=since, until=until)
        return RunsFinished(int(in_flight), {r["state"]: int(r["runs"]) for r in rows})

    async def purge_runs(self, epoch: int, before: datetime, batch: int) -> int:
        """Finished runs older than ``before`` (and their nodes), a fenced batch per
        transaction; returns how many runs."""
        deleted = 0
        while True:
            async with fenced(self.pool, epoch) as conn:
                count = int(await Q.purge_runs.fetchval(conn, before=before, limit=batch))
            deleted += count
            if count < batch:
                return deleted
