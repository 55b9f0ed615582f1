"""The worker role: consume, claim (batched), execute, record (batched), then ack.

A message is acknowledged only after its result is committed (guarantee 4); a delivery
whose claim fails (a duplicate, a stale attempt, a cancelled run) is acked unrun
(guarantee 2); the last failed attempt is rejected into the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiozk
import orjson
from aio_pika.abc import AbstractIncomingMessage
from aiozk import exc as zk_exc
from aiozk.recipes.lock import Lock
from aiozk.states import States

from jobsched.adapters.postgres import FinishedAttempt, HeldExecutions, JobStore, WakeListener
from jobsched.adapters.queries import CANCEL_CHANNEL
from jobsched.adapters.rabbitmq import AttemptMessage, Broker, MessageError
from jobsched.adapters.zookeeper import WORKERS_PATH
from jobsched.batching import Batcher
from jobsched.domain.retry import RetryPolicy, retry_delay, should_retry
from jobsched.metrics import Metrics
from jobsched.settings import Settings
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.tasks import registry as default_registry
from jobsched.worker.executors import (
    AttemptResult,
    ThreadRunner,
    run_http,
    run_python,
    run_shell,
)
from jobsched.worker.sandbox import ShellSandbox
from jobsched.worker.secrets import SecretSource

log = logging.getLogger(__name__)

Claim = tuple[uuid.UUID, int]
LOCKS_PATH = "/locks"
REGISTRY_REFRESH_S = 2.0


def import_task_modules(modules: tuple[str, ...] | list[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def next_state(result: AttemptResult, attempt: int, policy: RetryPolicy) -> tuple[str, float]:
    """The execution's state after this attempt, and the delay before the next one."""
    if result.outcome == "succeeded":
        return "succeeded", 0.0
    if should_retry(policy, attempt):
        return "retrying", retry_delay(policy, attempt)
    return "dead", 0.0


def assign_claims(claims: Sequence[Claim], rows: Sequence[Any]) -> list[Any]:
    """Each claimed row to the first delivery that asked for it, None to the others. Two
    copies of one message in the same batch claim one row: only one of them may run it."""
    by_key = {(r["id"], r["attempt"]): r for r in rows}
    return [by_key.pop(claim, None) for claim in claims]


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        broker: Broker,
        registry: TaskRegistry = default_registry,
        zk: aiozk.ZKClient | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("worker", settings.instance)
        self.store = store
        self.held = HeldExecutions(store.pool)
        self.broker = broker
        self.registry = registry
        self.zk = zk
        self.name = settings.instance
        self._claims: Batcher[Claim, Any] = Batcher(
            self._claim_batch, max_size=min(settings.worker_prefetch, 1000)
        )
        self._results: Batcher[FinishedAttempt, str | None] = Batcher(
            self._finish_batch, max_size=min(settings.worker_prefetch, 1000)
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._running: dict[uuid.UUID, asyncio.Task[AttemptResult]] = {}
        # Claimed executions -> when (monotonic) their lease was last known to be extended:
        # from the claim until the attempt is recorded, whether it runs, waits or commits.
        self._leases: dict[uuid.UUID, float] = {}
        self._taken_away: set[uuid.UUID] = set()
        self._started_at: dict[uuid.UUID, datetime] = {}
        self._run_slots = asyncio.Semaphore(settings.worker_concurrency)
        self._shell_slots = asyncio.Semaphore(settings.shell_concurrency)
        self._threads = ThreadRunner()  # runs plain-function python tasks
        self._http: aiohttp.ClientSession | None = None
        self.stats = {"succeeded": 0, "retrying": 0, "dead": 0, "lost_claims": 0, "malformed": 0}

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _claim_batch(self, claims: list[Claim]) -> list[Any]:
        rows = await self.store.claim_executions(claims, self.name, self.settings.worker_lease_s)
        return assign_claims(claims, rows)

    async def _finish_batch(self, results: list[FinishedAttempt]) -> list[str | None]:
        held = await self.store.finish_attempts(results, self.name)
        return [held.get(r.execution_id) for r in results]

    def take_away(self, execution_id: str | uuid.UUID) -> None:
        """The execution is no longer ours (cancelled, replaced, reaped): kill its run."""
        try:
            key = execution_id if isinstance(execution_id, uuid.UUID) else uuid.UUID(execution_id)
        except ValueError:
            return
        task = self._running.get(key)
        if task is not None and not task.done():
            log.info("execution %s was taken away; stopping it", key)
            self._taken_away.add(key)
            task.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        import_task_modules(self.settings.imports)
        self._http = aiohttp.ClientSession()
        # Leases, cancellations and the registry outlive ``stop``: they serve the runs that
        # are draining, and end only once the drain is over.
        drained = asyncio.Event()
        cancels = WakeListener(self.settings.database_url, self.take_away, CANCEL_CHANNEL)
        background = [asyncio.create_task(cancels.run(drained)),
                      asyncio.create_task(self._heartbeat())]
        if self.zk is not None:
            background.append(asyncio.create_task(self._register(drained)))
        cancel = await self.broker.consume(self._on_message, self.settings.worker_prefetch)
        log.info("worker %s consuming %s", self.name, self.broker.queue_name)
        try:
            await stop.wait()
        finally:
            await cancel()
            await self._drain()
            drained.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._claims.close()
            await self._results.close()
            await self._http.close()

    async def _register(self, stop: asyncio.Event) -> None:
        """An ephemeral znode per live worker: the cluster view lists them."""
        assert self.zk is not None
        path = f"{WORKERS_PATH}/{self.name}"
        while not stop.is_set():
            try:
                await self.zk.session.state.wait_for(States.CONNECTED)
                await self.zk.ensure_path(WORKERS_PATH)
                try:
                    await self.zk.create(path, data=self._describe(), ephemeral=True)
                except zk_exc.NodeExists:
                    pass
                lost = self.zk.session.state.wait_for(States.LOST)
                shown = self.inflight
                while not lost.done() and not stop.is_set():
                    await asyncio.wait([lost], timeout=REGISTRY_REFRESH_S)
                    if self.inflight != shown and not lost.done():
                        shown = self.inflight
                        await self.zk.set_data(path, self._describe(), force=True)
            except (TimeoutError, zk_exc.ZKError, OSError) as exc:
                log.warning("worker registration failed (%r); retrying", exc)
                await asyncio.sleep(1)

    def _describe(self) -> bytes:
        return orjson.dumps({"instance": self.name, "inflight": self.inflight,
                             "prefetch": self.settings.worker_prefetch})

    async def _heartbeat(self) -> None:
        """Extend the leases of claimed executions in one statement per period, until
        cancelled (after the drain). A run whose lease this worker no longer holds, or can
        no longer prove it holds, is stopped: the leader's reaper hands an expired lease to
        another worker, and the two must never run at once."""
        lease = self.settings.worker_lease_s
        period = lease / 3
        while True:
            await asyncio.sleep(period)
            ids = list(self._leases)
            if not ids:
                continue
            sent = time.monotonic()
            try:
                held = await asyncio.wait_for(
                    self.held.heartbeat(ids, self.name, lease), period)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat failed (%r)", exc)
                held = None
            for execution_id in ids:
                if execution_id not in self._leases:
                    continue  # finished meanwhile
                if held is None:
                    # Not renewed: stop one beat before the lease can lapse in the database
                    # (it was extended no earlier than ``confirmed``).
                    if sent - self._leases[execution_id] + period >= lease:
                        log.warning("lease of %s not renewed for %.1fs; stopping its run "
                                    "before another worker may start it", execution_id,
                                    sent - self._leases[execution_id])
                        self._lose_lease(execution_id)
                elif execution_id in held:
                    self._leases[execution_id] = sent
                else:
                    self._lose_lease(execution_id)

    def _lose_lease(self, execution_id: uuid.UUID) -> None:
        self._leases.pop(execution_id, None)
        self.take_away(execution_id)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        log.info("draining %d in-flight executions", len(self._inflight))
        _, pending = await asyncio.wait(self._inflight, timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self.metrics.inflight.set({}, len(self._inflight))
        try:
            await self._handle(message)
        finally:
            self._inflight.discard(task)
            self.metrics.inflight.set({}, len(self._inflight))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            attempt = AttemptMessage.decode(message.body)
        except MessageError as exc:
            # Not ours to run, but not ours to drop either: it goes to the dead-letter queue.
            self.stats["malformed"] += 1
            self.metrics.dead_lettered.inc({"cause": "malformed"})
            log.error("dead-lettering a malformed message: %s", exc)
            await message.reject(requeue=False)
            return
        claimed_at = time.monotonic()
        try:
            row = await self._claims.submit((attempt.execution_id, attempt.attempt))
        except Exception as exc:  # noqa: BLE001 - database trouble: hand the message back
            log.warning("claim of %s failed (%r); requeueing", attempt.execution_id, exc)
            await asyncio.sleep(1)
            await message.nack(requeue=True)
            return
        if row is None:
            self.stats["lost_claims"] += 1
            self.metrics.lost_claims.inc({})
            log.info("execution %s attempt %d not claimable: acked unrun",
                     attempt.execution_id, attempt.attempt)
            await message.ack()
            return
        self._leases[row["id"]] = claimed_at
        try:
            await self._attempt(message, row)
        finally:
            self._leases.pop(row["id"], None)
            self._started_at.pop(row["id"], None)

    async def _attempt(self, message: AbstractIncomingMessage, row: Any) -> None:
        """Run a claimed attempt (unless it is too late or its lease is gone) and record
        it; the message is settled in every case."""
        lock: Lock | None = None
        state: str | None
        try:
            early = self._too_late(row)
            if early is None:
                lock, early = await self._take_job_lock(row)
            if early is not None:
                result, state, delay = early, early.outcome, 0.0
            else:
                result, state, delay = await self._run(row)
        except asyncio.CancelledError:
            # Draining ran out of time: hand the execution back for another worker. The
            # message is acked, not dead-lettered: the leader publishes the next attempt
            # (or, if the hand-back failed, the reaper does once the lease expires).
            await self._hand_back(row)
            await message.ack()
            raise
        finally:
            if lock is not None:
                await _release(lock)
        if state is None:  # taken away: its new state is recorded, or the reaper's to set
            await self._close_attempt(row, "cancelled", result)
            await message.ack()
            return
        await self._record(message, row, result, state, delay)

    async def _run(self, row: Any) -> tuple[AttemptResult, str | None, float]:
        """Run the attempt: its result, the execution's next state (None: it was taken
        away mid-run) and the delay before a retry."""
        if row["id"] not in self._leases:  # the lease lapsed while it waited for its lock
            return AttemptResult("cancelled", error="lease lost before the run started"), \
                None, 0.0
        task = asyncio.ensure_future(self._hold_then_execute(row))
        self._running[row["id"]] = task
        started = time.perf_counter()
        try:
            result = await task
        except asyncio.CancelledError:
            if row["id"] not in self._taken_away:
                raise
            self._taken_away.discard(row["id"])
            stopped = AttemptResult("cancelled", error="stopped: the execution was cancelled")
            return stopped, None, 0.0
        finally:
            self._running.pop(row["id"], None)
        self.metrics.execution_duration.observe({"kind": row["kind"]},
                                                time.perf_counter() - started)
        self.metrics.executions.inc({"kind": row["kind"], "outcome": result.outcome})
        policy = RetryPolicy(
            max_attempts=row["max_attempts"],
            backoff_s=row["backoff_s"],
            max_backoff_s=row["max_backoff_s"],
            jitter=row["retry_jitter"],
        )
        state, delay = next_state(result, row["attempt"], policy)
        return result, state, delay

    def _too_late(self, row: Any) -> AttemptResult | None:
        """A first attempt that waited past the job's starting deadline is not run."""
        deadline = row["starting_deadline_s"]
        if deadline is None or row["attempt"] != 1:
            return None
        late = (datetime.now(UTC) - row["scheduled_for"]).total_seconds()
        if late <= deadline:
            return None
        return AttemptResult("missed", error=f"started {late:.1f}s late, past "
                                             f"starting_deadline_s={deadline:g}")

    async def _take_job_lock(self, row: Any) -> tuple[Lock | None, AttemptResult | None]:
        """forbid/replace jobs run under a ZooKeeper lock per job, released when the run
        ends or, if this worker dies, when its session does."""
        if row["concurrency"] == "allow" or self.zk is None:
            return None, None
        lock = Lock(f"{LOCKS_PATH}/{row['job_id']}")
        lock.set_client(self.zk)
        wait = 0.5 if row["concurrency"] == "forbid" else min(30.0, row["timeout_s"])
        try:
            await lock.acquire(timeout=wait)
        except (TimeoutError, zk_exc.TimeoutError, zk_exc.ZKError) as exc:
            if row["concurrency"] == "forbid":
                return None, AttemptResult(
                    "skipped", error="another run of this job holds its lock (concurrency=forbid)")
            return None, AttemptResult("failed", error=f"job lock not obtained in {wait:g}s: "
                                                       f"{exc!r}")
        return lock, None

    async def _close_attempt(self, row: Any, outcome: str, result: AttemptResult) -> None:
        """End the attempt row of a run taken away; if the database is unreachable the
        reaper ends it instead."""
        try:
            await self.held.close_attempt(row["id"], row["attempt"], outcome, result.error,
                                          result.output, result.exit_code)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing attempt %d of %s failed (%r)", row["attempt"], row["id"], exc)

    async def _hand_back(self, row: Any) -> None:
        try:
            await self.store.hand_back(row["id"], row["attempt"], self.name)
        except Exception as exc:  # noqa: BLE001 - the lease expiry recovers it anyway
            log.warning("hand-back of %s failed (%r); its lease will expire", row["id"], exc)

    async def _record(self, message: AbstractIncomingMessage, row: Any,
                      result: AttemptResult, state: str, delay: float) -> None:
        finished = FinishedAttempt(
            execution_id=row["id"],
            attempt=row["attempt"],
            state=state,
            outcome=result.outcome,
            exit_code=result.exit_code,
            error=result.error,
            output=result.output,
            retry_in_s=delay,
            reason=result.error if state in ("missed", "skipped") else None,
            started_at=self._started_at.pop(row["id"], None),
        )
        committed = await self._commit(finished)
        if committed is None:
            log.warning("execution %s was taken from this worker; its result is dropped",
                        row["id"])
            await self._close_attempt(row, result.outcome, result)
            await message.ack()
            return
        self.stats[committed] = self.stats.get(committed, 0) + 1
        log.info("execution %s attempt %d %s", row["id"], row["attempt"], committed,
                 extra={"job_id": row["job_id"], "execution_id": row["id"],
                        "attempt": row["attempt"]})
        if committed == "retrying":
            self.metrics.retries.inc({})
        if committed == "dead":
            self.metrics.dead_lettered.inc({"cause": "attempts_exhausted"})
            await message.reject(requeue=False)  # dead-lettered by the queue's DLX
        else:
            await message.ack()

    async def _commit(self, finished: FinishedAttempt) -> str | None:
        """Record a result, retrying through database outages: the ack waits for it. The
        retries stay a second apart at most, so the result is in soon after PostgreSQL is
        back (the leader's reaper waits one lease after an outage)."""
        delay = 0.2
        while True:
            try:
                return await self._results.submit(finished)
            except Exception as exc:  # noqa: BLE001
                log.warning("recording result of %s failed (%r); retrying",
                            finished.execution_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _hold_then_execute(self, row: Any) -> AttemptResult:
        """A fire published ahead of its time (the leader's lookahead) starts when due."""
        early = (row["scheduled_for"] - datetime.now(UTC)).total_seconds()
        if early > 0:
            await asyncio.sleep(early)
        # At most worker_concurrency runs at once, of which shell_concurrency shell runs.
        shell = self._shell_slots if row["kind"] == "shell" else contextlib.nullcontext()
        async with self._run_slots, shell:
            started = datetime.now(UTC)
            self._started_at[row["id"]] = started
            if row["attempt"] == 1:
                late = (started - row["scheduled_for"]).total_seconds()
                self.metrics.start_lateness.observe({}, max(0.0, late))
            return await self._execute(row)

    async def _execute(self, row: Any) -> AttemptResult:
        payload = row["payload"]
        limit = self.settings.output_limit_bytes
        timeout = row["timeout_s"]
        kind = row["kind"]
        secrets = SecretSource.from_settings(self.settings)
        if kind == "shell":
            return await run_shell(payload, timeout, limit,
                                   ShellSandbox.from_settings(self.settings), secrets)
        if kind == "http":
            assert self._http is not None
            return await run_http(payload, timeout, limit, self._http, secrets)
        if kind == "python":
            context = TaskContext(row["id"], row["attempt"], row["job_id"], row["scheduled_for"])
            return await run_python(payload, timeout, limit, self.registry, context,
                                    self._threads)
        return AttemptResult("failed", error=f"unknown job kind {kind!r}")


async def _release(lock: Lock) -> None:
    try:
        await asyncio.wait_for(lock.release(), 5)
    except Exception as exc:  # noqa: BLE001 - the lock is ephemeral: the session frees it
        log.warning("releasing a job lock failed (%r)", exc)
