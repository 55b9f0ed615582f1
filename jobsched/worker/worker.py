"""The worker role: consume, claim (batched), execute, record (batched), then ack.

A message is acknowledged only after its result is committed (guarantee 4); a delivery
whose claim fails (a duplicate, a stale attempt, a cancelled run) is acked unrun
(guarantee 2); the last failed attempt is rejected into the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from typing import Any

import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from jobsched.adapters.postgres import FinishedAttempt, JobStore
from jobsched.adapters.rabbitmq import AttemptMessage, Broker, MessageError
from jobsched.batching import Batcher
from jobsched.domain.retry import RetryPolicy, retry_delay, should_retry
from jobsched.settings import Settings
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.tasks import registry as default_registry
from jobsched.worker.executors import AttemptResult, run_http, run_python, run_shell

log = logging.getLogger(__name__)

Claim = tuple[uuid.UUID, int]


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


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        broker: Broker,
        registry: TaskRegistry = default_registry,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.registry = registry
        self.name = settings.instance
        self._claims: Batcher[Claim, Any] = Batcher(
            self._claim_batch, max_size=settings.worker_prefetch
        )
        self._results: Batcher[FinishedAttempt, str | None] = Batcher(
            self._finish_batch, max_size=settings.worker_prefetch
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.stats = {"succeeded": 0, "retrying": 0, "dead": 0, "lost_claims": 0, "malformed": 0}

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _claim_batch(self, claims: list[Claim]) -> list[Any]:
        rows = await self.store.claim_executions(claims, self.name, self.settings.worker_lease_s)
        by_key = {(r["id"], r["attempt"]): r for r in rows}
        return [by_key.get(c) for c in claims]

    async def _finish_batch(self, results: list[FinishedAttempt]) -> list[str | None]:
        held = await self.store.finish_attempts(results, self.name)
        return [held.get(r.execution_id) for r in results]

    async def run(self, stop: asyncio.Event) -> None:
        import_task_modules(self.settings.imports)
        self._http = aiohttp.ClientSession()
        cancel = await self.broker.consume(self._on_message, self.settings.worker_prefetch)
        log.info("worker %s consuming %s", self.name, self.broker.queue_name)
        try:
            await stop.wait()
        finally:
            await cancel()
            await self._drain()
            await self._claims.close()
            await self._results.close()
            await self._http.close()

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
        try:
            await self._handle(message)
        finally:
            self._inflight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            attempt = AttemptMessage.decode(message.body)
        except MessageError as exc:
            # Not ours to run, but not ours to drop either: it goes to the dead-letter queue.
            self.stats["malformed"] += 1
            log.error("dead-lettering a malformed message: %s", exc)
            await message.reject(requeue=False)
            return
        try:
            row = await self._claims.submit((attempt.execution_id, attempt.attempt))
        except Exception as exc:  # noqa: BLE001 - database trouble: hand the message back
            log.warning("claim of %s failed (%r); requeueing", attempt.execution_id, exc)
            await asyncio.sleep(1)
            await message.nack(requeue=True)
            return
        if row is None:
            self.stats["lost_claims"] += 1
            log.info("execution %s attempt %d not claimable: acked unrun",
                     attempt.execution_id, attempt.attempt)
            await message.ack()
            return
        try:
            result = await self._execute(row)
        except asyncio.CancelledError:
            # Drain timed out: the lease runs out and the leader retries it (issue 3 reaps).
            await message.nack(requeue=True)
            raise
        policy = RetryPolicy(
            max_attempts=row["max_attempts"],
            backoff_s=row["backoff_s"],
            max_backoff_s=row["max_backoff_s"],
            jitter=row["retry_jitter"],
        )
        state, delay = next_state(result, row["attempt"], policy)
        finished = FinishedAttempt(
            execution_id=row["id"],
            attempt=row["attempt"],
            state=state,
            outcome=result.outcome,
            exit_code=result.exit_code,
            error=result.error,
            output=result.output,
            retry_in_s=delay,
        )
        committed = await self._commit(finished)
        if committed is None:
            log.warning("execution %s was taken from this worker; its result is dropped",
                        row["id"])
            await message.ack()
            return
        self.stats[committed] = self.stats.get(committed, 0) + 1
        log.info("execution %s attempt %d %s", row["id"], row["attempt"], committed)
        if committed == "dead":
            await message.reject(requeue=False)  # dead-lettered by the queue's DLX
        else:
            await message.ack()

    async def _commit(self, finished: FinishedAttempt) -> str | None:
        """Record a result, retrying through database outages: the ack waits for it."""
        delay = 0.2
        while True:
            try:
                return await self._results.submit(finished)
            except Exception as exc:  # noqa: BLE001
                log.warning("recording result of %s failed (%r); retrying",
                            finished.execution_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _execute(self, row: Any) -> AttemptResult:
        payload = row["payload"]
        limit = self.settings.output_limit_bytes
        timeout = row["timeout_s"]
        kind = row["kind"]
        if kind == "shell":
            return await run_shell(payload, timeout, limit)
        if kind == "http":
            assert self._http is not None
            return await run_http(payload, timeout, limit, self._http)
        if kind == "python":
            context = TaskContext(row["id"], row["attempt"], row["job_id"], row["scheduled_for"])
            return await run_python(payload, timeout, limit, self.registry, context)
        return AttemptResult("failed", error=f"unknown job kind {kind!r}")
