"""The worker role: consume, claim (batched), execute, record (batched), then ack.

A message is acknowledged only after its result is committed (guarantee 4); a delivery
whose claim fails (a duplicate, a stale attempt, a cancelled run) is acked unrun
(guarantee 2); the last failed attempt is rejected into the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from jobsched.batching import Batcher
from jobsched.domain.priority import Priority
from jobsched.domain.retry import RetryPolicy, retry_delay, should_retry
from jobsched.domain.states import AttemptOutcome, ExecutionState
from jobsched.messages import AttemptMessage, MessageError
from jobsched.metrics import Metrics
from jobsched.ports import (
    Broker,
    ClaimedExecution,
    Coordinator,
    Delivery,
    Dispatch,
    FinishedAttempt,
    JobLock,
    NodeInputs,
    WorkerRepository,
)
from jobsched.settings import Settings
from jobsched.tasks import TaskContext, TaskRegistry
from jobsched.tasks import registry as default_registry
from jobsched.worker import capture
from jobsched.worker.capture import OutputBuffer
from jobsched.worker.deadlines import Alarms
from jobsched.worker.http import HttpRunner
from jobsched.worker.python import THREAD_NOT_INTERRUPTED, ThreadRunner, run_python
from jobsched.worker.results import AttemptResult
from jobsched.worker.sandbox import ShellSandbox, ShellStatus
from jobsched.worker.secrets import RunSecrets, SecretResolver
from jobsched.worker.shell import run_shell
from jobsched.worker.slots import BandSlots, Gate

log = logging.getLogger(__name__)

#: How often the in-flight and waiting gauges are brought up to date.
GAUGE_PERIOD_S = 1.0

#: (execution id, attempt, the message's due time: the execution's day partition)
Claim = tuple[uuid.UUID, int, datetime | None]


@dataclass(slots=True)
class LiveOutput:
    """A running attempt's output, as the worker streams it: ``flushed`` is the buffer's
    ``changes`` when it was last written to the database."""

    attempt: int
    buffer: OutputBuffer
    secrets: RunSecrets  # what to mask: read when rendered (a shell run resolves its own)
    flushed: int = 0

    def render(self, limit: int) -> str | None:
        return self.buffer.render(limit, self.secrets.masked)

    def render_partial(self, limit: int) -> str:
        return self.buffer.render_partial(limit, self.secrets.masked)


class SharedDelivery:
    """A message of several attempts, settled once every attempt in it is: acked, or, if
    any attempt was handed back unrun (a drain, a claim the database refused), requeued
    whole: when it comes again the attempts already recorded lose their claims (acked
    unrun) and the others run."""

    def __init__(self, delivery: Delivery, parts: int) -> None:
        self.delivery = delivery
        self.left = parts
        self.requeue = False

    async def settle(self, *, requeue: bool = False) -> None:
        self.requeue = self.requeue or requeue
        self.left -= 1
        if self.left == 0:
            if self.requeue:
                await self.delivery.nack(requeue=True)
            else:
                await self.delivery.ack()


class PartDelivery:
    """One attempt of a message of several, settled as a Delivery of its own: an ack or a
    requeue counts towards its message's; a rejection dead-letters a copy of the attempt
    alone (``dead_letter``) and counts as done."""

    def __init__(self, shared: SharedDelivery, message: AttemptMessage,
                 dead_letter: Callable[[AttemptMessage], Awaitable[None]]) -> None:
        self.shared = shared
        self.message = message
        self.dead_letter = dead_letter
        self.settled = False

    @property
    def body(self) -> bytes:
        return self.message.encode()

    def _settling(self) -> None:
        if self.settled:
            raise RuntimeError(f"attempt {self.message.message_id} settled twice")
        self.settled = True

    async def ack(self) -> None:
        self._settling()
        await self.shared.settle()

    async def nack(self, requeue: bool = True) -> None:
        await self.reject(requeue)

    async def reject(self, requeue: bool = False) -> None:
        self._settling()
        if not requeue:
            await self.dead_letter(self.message)
        await self.shared.settle(requeue=requeue)


class TaskModuleNotFound(ImportError):
    """An ``--import`` module that is nowhere on the import path: the message says where
    it was looked for and how to make it found."""


def import_task_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import the modules whose ``@task`` functions this process runs.

    The current directory goes first on ``sys.path`` (as Celery's worker puts it), so
    ``jobsched run --import myapp.tasks`` from the project directory finds ``myapp``
    without ``PYTHONPATH``; the installed ``jobsched`` script, unlike ``python -m``, does
    not put it there."""
    if not modules:
        return
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (module == missing or module.startswith(missing + ".")):
                raise TaskModuleNotFound(
                    f"no module named {missing!r} (for --import {module}) in the current "
                    f"directory ({here}) or on the Python path: run jobsched from the "
                    f"directory that holds {missing.split('.')[0]}, or add that directory "
                    "to PYTHONPATH", name=missing) from exc
            raise  # the task module itself imports something missing: its own error


def next_state(result: AttemptResult, attempt: int,
               policy: RetryPolicy) -> tuple[ExecutionState, float]:
    """The execution's state after this attempt, and the delay before the next one.
    ``attempt`` counts the attempts that count against the policy: those lost with a worker
    or handed back on a shutdown do not."""
    if result.outcome == AttemptOutcome.SUCCEEDED:
        return ExecutionState.SUCCEEDED, 0.0
    if should_retry(policy, attempt):
        return ExecutionState.RETRYING, retry_delay(policy, attempt)
    return ExecutionState.DEAD, 0.0


def assign_claims(claims: Sequence[Claim],
                  rows: Sequence[ClaimedExecution]) -> list[ClaimedExecution | None]:
    """Each claimed row to the first delivery that asked for it, None to the others. Two
    copies of one message in the same batch claim one row: only one of them may run it."""
    by_key = {(r.id, r.attempt): r for r in rows}
    return [by_key.pop((claim[0], claim[1]), None) for claim in claims]


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: WorkerRepository,
        broker: Broker,
        registry: TaskRegistry = default_registry,
        coordinator: Coordinator | None = None,
        metrics: Metrics | None = None,
        secrets: SecretResolver | None = None,
        sandbox: ShellSandbox | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("worker", settings.instance)
        self.store = store
        self.broker = broker
        self.registry = registry
        self.coordinator = coordinator
        self.name = settings.instance
        #: Set once the drain is over: what serves draining runs (leases, cancellations,
        #: the registry) runs until then.
        self.drained = asyncio.Event()
        # High claims do not wait behind a flush in flight (claims lock only their own
        # executions, in id order: two flushes at once cannot deadlock).
        self._claims: Batcher[Claim, ClaimedExecution | None] = Batcher(
            self._claim_batch, max_size=min(settings.worker_prefetch, 1000),
            express=Priority.HIGH,
        )
        self._results: Batcher[FinishedAttempt, ExecutionState | None] = Batcher(
            self._finish_batch, max_size=min(settings.worker_prefetch, 1000)
        )
        # Workflow nodes' inputs, read together when claimed together (a fan-out's
        # children): no added wait for a lone one.
        self._node_inputs_batch: Batcher[uuid.UUID, NodeInputs | None] = Batcher(
            self._read_node_inputs, max_size=500, max_delay=0.0)
        self._inflight: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()  # workflow nodes (see _publish_nodes)
        #: The task each run goes on in (the one that claimed it), by execution id.
        self._running: dict[uuid.UUID, asyncio.Task[Any]] = {}
        # Claimed executions -> when (monotonic) their lease was last known to be extended:
        # from the claim until the attempt is recorded, whether it runs, waits or commits.
        self._leases: dict[uuid.UUID, float] = {}
        #: The fire time (day partition) of each execution holding a lease, for its renewals.
        self._days: dict[uuid.UUID, datetime] = {}
        self._taken_away: set[uuid.UUID] = set()
        self._started_at: dict[uuid.UUID, datetime] = {}
        #: Output of the python and shell runs going on, flushed by ``_stream_output``.
        self._outputs: dict[uuid.UUID, LiveOutput] = {}
        # Deliveries not claimed yet (held until due, or waiting for a slot): on a drain
        # they go back to the queue at once, unrun and unclaimed.
        self._unclaimed: set[asyncio.Task[None]] = set()
        self._run_slots = BandSlots(settings.worker_concurrency,
                                    reserved=settings.kept_for_high(settings.worker_concurrency))
        # Shell slots are banded the same way: a high shell run is not queued behind low
        # shell runs waiting for one, and takes a kept one while they hold the rest.
        self._shell_slots = BandSlots(
            settings.shell_concurrency,
            reserved=settings.kept_for_high(settings.shell_concurrency))
        self._threads = ThreadRunner()  # runs plain-function python tasks
        self._alarms = Alarms()  # runs fired ahead wait here until due
        #: Plain functions timed out or cancelled whose threads still run: each resolves
        #: when its thread ends, and the run's slot is held until then.
        self._lingering: dict[uuid.UUID, asyncio.Future[None]] = {}
        #: How the child process of a cancelled ``isolation="process"`` run was killed.
        self._killed: dict[uuid.UUID, str] = {}
        self._releasing: set[asyncio.Task[None]] = set()  # job locks of such threads
        self._http = HttpRunner(settings.egress_policy())
        self._sandbox = sandbox or ShellSandbox.from_settings(settings)
        self._secrets = secrets or SecretResolver.from_settings(settings)
        #: Attempts that came several to a message and wait in this worker, per band.
        self._gates = {band: Gate(settings.worker_prefetch) for band in Priority}
        self._shown_inflight = -1
        self.stats = {"succeeded": 0, "retrying": 0, "dead": 0, "lost_claims": 0, "malformed": 0}

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _claim_batch(self, claims: list[Claim]) -> list[ClaimedExecution | None]:
        rows = await self.store.claim_executions([(c[0], c[1]) for c in claims], self.name,
                                                 self.settings.worker_lease_s,
                                                 scheduled_for=[c[2] for c in claims])
        return assign_claims(claims, rows)

    async def _read_node_inputs(self, ids: list[uuid.UUID]) -> list[NodeInputs | None]:
        found = await self.store.node_inputs(ids)
        return [found.get(i) for i in ids]

    async def _finish_batch(self, results: list[FinishedAttempt]) -> list[ExecutionState | None]:
        if any(r.workflow_run_id is not None for r in results):
            held, queued = await self.store.finish_node_attempts(results, self.name)
            if queued:
                self._publish_nodes(queued)
        else:
            held = await self.store.finish_attempts(results, self.name)
        return [held.get(r.execution_id) for r in results]

    def _publish_nodes(self, dispatches: list[Dispatch]) -> None:
        """Publish the workflow nodes this worker's results queued (committed), without
        holding up the acks: a node then starts a leader's round trip sooner. If this
        fails, or the worker dies first, the leader's outbox sweep publishes them."""

        async def publish() -> None:
            try:
                confirmed = await self.broker.publish_many([d.message() for d in dispatches])
                sent = [d for d, ok in zip(dispatches, confirmed, strict=True) if ok]
                await self.store.mark_published([d.execution_id for d in sent],
                                                scheduled_for=[d.scheduled_for for d in sent],
                                                attempts=[d.attempt for d in sent])
            except Exception as exc:  # noqa: BLE001 - the leader's outbox sweep publishes
                log.warning("publishing %d workflow nodes failed (%r); the leader will",
                            len(dispatches), exc)

        task = asyncio.create_task(publish())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def take_away(self, execution_id: str | uuid.UUID) -> None:
        """The execution is no longer ours (cancelled, replaced, reaped): kill its run."""
        try:
            key = execution_id if isinstance(execution_id, uuid.UUID) else uuid.UUID(execution_id)
        except ValueError:
            return
        task = self._running.get(key)
        if task is not None and not task.done() and key not in self._taken_away:
            log.info("execution %s was taken away; stopping it", key)
            self._taken_away.add(key)
            task.cancel()

    def start_shell(self) -> ShellStatus:
        """Make shell runs possible (a block of uids of their own), or say once why not."""
        if "shell" in self.settings.disabled_kinds:
            return ShellStatus(False, "shell jobs are disabled (disabled_kinds)")
        status = self._sandbox.start()
        if status.enabled:
            log.info("shell runs use uids %d-%d", *(status.uids or (0, 0)))
        else:
            log.warning("shell runs are refused: %s", status.reason)
        return status

    def shell_status(self) -> dict[str, object]:
        if "shell" in self.settings.disabled_kinds:
            return ShellStatus(False, "shell jobs are disabled (disabled_kinds)").describe()
        return self._sandbox.status.describe()

    async def run(self, stop: asyncio.Event) -> None:
        import_task_modules(self.settings.imports)
        capture.install()  # runs' prints and log records go to their own output
        self.start_shell()
        # What start-up made (modules, settings, connections) lives as long as the process:
        # kept out of the cyclic collector's full passes, which otherwise walk it all while
        # runs due at the same instant wait to start.
        gc.freeze()
        background = [asyncio.create_task(self._heartbeat()),
                      asyncio.create_task(self._stream_output()),
                      asyncio.create_task(self._show_gauges())]
        if self.coordinator is not None:
            background.append(asyncio.create_task(self.coordinator.stay_registered(
                self.name, self._describe, self._inflight_changed, self.drained)))
        cancel = await self.broker.consume(self._on_delivery, self.settings.worker_prefetch)
        log.info("worker %s consuming", self.name)
        try:
            await stop.wait()
        finally:
            await cancel()
            await self._drain()
            self.drained.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._publishing:
                await asyncio.wait(self._publishing, timeout=5)
            await self._claims.close()
            await self._results.close()
            await self._node_inputs_batch.close()
            await self._http.close()
            await self._sandbox.aclose()

    def _describe(self) -> bytes:
        self._shown_inflight = self.inflight
        return orjson.dumps({"instance": self.name, "inflight": self.inflight,
                             "prefetch": self.settings.worker_prefetch})

    def _inflight_changed(self) -> bool:
        return self.inflight != self._shown_inflight

    async def _show_gauges(self) -> None:
        """The in-flight and waiting gauges, refreshed every ``GAUGE_PERIOD_S`` instead of
        at every change (four label look-ups per run: a tenth of the worker's own CPU per
        no-op run); a scrape comes every 15 s or so."""
        while True:
            self.metrics.inflight.set({}, len(self._inflight))
            for band in Priority:
                self.metrics.waiting.set({"priority": band}, self._run_slots.waiting(band))
            await asyncio.sleep(GAUGE_PERIOD_S)

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
                    self.store.heartbeat(ids, self.name, lease,
                                         scheduled_for=[self._days.get(i) for i in ids]),
                    period)
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

    async def _stream_output(self) -> None:
        """Every ``output_flush_s``, write the output so far of the running attempts whose
        output changed, in one statement; nothing when none did. The recorded result
        replaces it when the attempt ends (the statement touches only attempts still
        running on this worker, and skips one whose result is being recorded)."""
        period = self.settings.output_flush_s
        if period <= 0:
            return
        limit = self.settings.output_limit_bytes
        while True:
            await asyncio.sleep(period)
            changed = [(execution_id, live, live.buffer.changes)
                       for execution_id, live in self._outputs.items()
                       if live.buffer.changes != live.flushed]
            if not changed:
                continue
            try:
                await self.store.stream_output(
                    [(execution_id, live.attempt, live.render_partial(limit))
                     for execution_id, live, _ in changed], self.name)
            except Exception as exc:  # noqa: BLE001 - the next period tries again
                log.warning("writing the output of %d running attempts failed (%r)",
                            len(changed), exc)
                continue
            for _, live, changes in changed:
                live.flushed = changes

    def _lose_lease(self, execution_id: uuid.UUID) -> None:
        self._leases.pop(execution_id, None)
        self._days.pop(execution_id, None)
        self.take_away(execution_id)

    async def _drain(self) -> None:
        for task in list(self._unclaimed):
            task.cancel()  # not claimed: back to the queue, for another worker
        if not self._inflight:
            return
        log.info("draining %d in-flight executions", len(self._inflight))
        _, pending = await asyncio.wait(self._inflight, timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            messages = AttemptMessage.decode_many(delivery.body)
        except MessageError as exc:
            # Not ours to run, but not ours to drop either: it goes to the dead-letter queue.
            self.stats["malformed"] += 1
            self.metrics.dead_lettered.inc({"cause": "malformed"})
            log.error("dead-lettering a malformed message: %s", exc)
            await delivery.reject(requeue=False)
            return
        if len(messages) == 1:
            await self._on_attempt(delivery, messages[0])
        else:
            await self._split(delivery, messages)

    async def _split(self, delivery: Delivery, messages: list[AttemptMessage]) -> None:
        """A message of several attempts: each goes its own way, as if it had come alone
        (its own task, hold, slot, claim and run), and the message is settled once all of
        them are (``SharedDelivery``). At most ``worker_prefetch`` attempts of a band that
        came in such messages wait in this worker at once; the rest wait in their messages
        until some have ended. A drain hands back the attempts not started yet."""
        shared = SharedDelivery(delivery, len(messages))
        task = asyncio.current_task()
        assert task is not None
        self._unclaimed.add(task)
        started = 0
        try:
            for message in messages:
                gate = self._gates[message.priority]
                await gate.acquire()
                part = PartDelivery(shared, message, self._dead_letter)
                runner = asyncio.create_task(self._on_attempt(part, message))
                self._inflight.add(runner)
                self._unclaimed.add(runner)  # a drain that comes first hands it back
                runner.add_done_callback(self._part_ended(part, gate))
                started += 1
        except asyncio.CancelledError:
            for _ in messages[started:]:
                await shared.settle(requeue=True)
            raise
        finally:
            self._unclaimed.discard(task)

    def _part_ended(self, part: PartDelivery,
                    gate: Gate) -> Callable[[asyncio.Task[None]], None]:
        def ended(runner: asyncio.Task[None]) -> None:
            gate.release()
            self._inflight.discard(runner)
            self._unclaimed.discard(runner)
            if not part.settled:  # cancelled (a drain) before it began: it goes back
                settle = asyncio.ensure_future(self._hand_back_unstarted(part))
                self._releasing.add(settle)
                settle.add_done_callback(self._releasing.discard)
        return ended

    async def _hand_back_unstarted(self, part: PartDelivery) -> None:
        try:
            await part.nack(requeue=True)
        except Exception as exc:  # noqa: BLE001 - a closed channel requeues it anyway
            log.warning("handing back attempt %s failed (%r)", part.message.message_id, exc)

    async def _dead_letter(self, message: AttemptMessage) -> None:
        """An attempt that came with others is dead-lettered alone: a copy of it goes to
        the dead-letter exchange, and the message is acked for it."""
        try:
            await self.broker.publish_dead([message])
        except Exception as exc:  # noqa: BLE001 - the execution is dead in the database
            log.warning("copying dead execution %s to the dead-letter queue failed (%r)",
                        message.execution_id, exc)

    async def _on_attempt(self, delivery: Delivery, message: AttemptMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            await self._handle(delivery, message)
        finally:
            self._inflight.discard(task)
            self._unclaimed.discard(task)

    async def _handle(self, delivery: Delivery, message: AttemptMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._unclaimed.add(task)
        try:
            await self._hold_until_due(message)
            outcome = await self._claim_and_run(delivery, message)
        except asyncio.CancelledError:
            if task in self._unclaimed:  # draining before the claim: give it back unrun
                await delivery.nack(requeue=True)
            raise
        if outcome is not None:
            claimed, result, state, delay = outcome
            try:
                await self._settle(delivery, claimed, result, state, delay)
            finally:
                self._leases.pop(claimed.id, None)
                self._days.pop(claimed.id, None)
                self._started_at.pop(claimed.id, None)

    async def _hold_until_due(self, message: AttemptMessage) -> None:
        """A fire published ahead of its time (the leader's lookahead) waits here, unclaimed,
        until shortly before it is due (``worker_claim_ahead_s``): the claim's round trip
        then happens before the fire time, not after it, and the run starts on time. A
        worker that dies in that short window leaves a lost attempt (retried, not counted
        against the job's attempts); one that dies before it leaves nothing claimed."""
        if message.due is not None:
            await self._alarms.until(
                message.due - timedelta(seconds=self.settings.worker_claim_ahead_s))

    async def _claim_and_run(
        self, delivery: Delivery, message: AttemptMessage,
    ) -> tuple[ClaimedExecution, AttemptResult, ExecutionState | None, float] | None:
        """Take a run slot (the band's turn), claim, and run. None when the delivery was
        settled here (a lost claim, a claim that failed)."""
        band = message.priority
        await self._run_slots.acquire(band)
        claimed_id: uuid.UUID | None = None
        try:
            # A shell run waits for a shell slot before its claim too (its kind is in the
            # message; a message of an older version says nothing and waits after).
            shell = (self._shell_slots.slot(band) if message.kind == "shell"
                     else contextlib.nullcontext())
            async with shell:
                claimed_at = time.monotonic()
                try:
                    claimed = await self._claims.submit(
                        (message.execution_id, message.attempt, message.due), band)
                except Exception as exc:  # noqa: BLE001 - database trouble: hand it back
                    log.warning("claim of %s failed (%r); requeueing", message.execution_id,
                                exc)
                    await asyncio.sleep(1)
                    await delivery.nack(requeue=True)
                    return None
                finally:
                    current = asyncio.current_task()
                    if current is not None:
                        self._unclaimed.discard(current)
                if claimed is None:
                    self.stats["lost_claims"] += 1
                    self.metrics.lost_claims.inc({})
                    log.info("execution %s attempt %d not claimable: acked unrun",
                             message.execution_id, message.attempt)
                    await delivery.ack()
                    return None
                self._leases[claimed.id] = claimed_at
                self._days[claimed.id] = claimed.scheduled_for
                claimed_id = claimed.id
                late_shell = claimed.kind == "shell" and message.kind != "shell"
                try:
                    async with (self._shell_slots.slot(band) if late_shell
                                else contextlib.nullcontext()):
                        result, state, delay = await self._attempt(delivery, claimed)
                except BaseException:
                    self._leases.pop(claimed.id, None)
                    self._days.pop(claimed.id, None)
                    self._started_at.pop(claimed.id, None)
                    raise
                return claimed, result, state, delay
        finally:
            self._release_slot(band, claimed_id)

    def _release_later(self, lock: JobLock) -> None:
        async def release() -> None:
            try:
                await lock.release()
            except Exception as exc:  # noqa: BLE001 - the session's end releases it too
                log.warning("releasing a job lock failed (%r)", exc)

        task = asyncio.create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _release_slot(self, band: Priority, claimed_id: uuid.UUID | None) -> None:
        """Free a run's slot, or, if its plain function's thread still runs (timed out or
        cancelled: a thread cannot be killed), once that thread ends: threads left running
        never make more runs at once than ``worker_concurrency``."""
        ended = self._lingering.pop(claimed_id, None) if claimed_id is not None else None
        if ended is None or ended.done():
            self._run_slots.release(band)
            return
        log.info("execution %s: its function's thread still runs; its slot stays taken "
                 "until it returns", claimed_id)
        ended.add_done_callback(lambda _: self._run_slots.release(band))

    async def _attempt(self, delivery: Delivery, claimed: ClaimedExecution,
                       ) -> tuple[AttemptResult, ExecutionState | None, float]:
        """Run a claimed attempt (unless it is too late or its lease is gone): its result,
        the execution's next state (None: taken away) and the delay before a retry. A
        drain that runs out of time hands the execution back and settles the delivery."""
        lock: JobLock | None = None
        try:
            early = self._too_late(claimed)
            if early is None:
                lock, early = await self._take_job_lock(claimed)
            if early is not None:
                return early, ExecutionState(early.outcome), 0.0
            return await self._run(claimed)
        except asyncio.CancelledError:
            # Draining ran out of time: hand the execution back for another worker. The
            # message is acked, not dead-lettered: the leader publishes the next attempt
            # (or, if the hand-back failed, the reaper does once the lease expires).
            await self._hand_back(claimed)
            await delivery.ack()
            raise
        finally:
            if lock is not None:
                ended = self._lingering.get(claimed.id)
                if ended is not None and not ended.done():
                    # Its function's thread still runs: the job's lock is held until it
                    # returns, so forbid/replace never let a second run overlap it.
                    ended.add_done_callback(lambda _: self._release_later(lock))
                else:
                    await lock.release()

    async def _settle(self, delivery: Delivery, claimed: ClaimedExecution,
                      result: AttemptResult, state: ExecutionState | None,
                      delay: float) -> None:
        if state is None:  # taken away: its new state is recorded, or the reaper's to set
            await self._close_attempt(claimed, AttemptOutcome.CANCELLED, result)
            await delivery.ack()
            return
        await self._record(delivery, claimed, result, state, delay)

    async def _run(self, claimed: ClaimedExecution,
                   ) -> tuple[AttemptResult, ExecutionState | None, float]:
        """Run the attempt: its result, the execution's next state (None: it was taken
        away mid-run) and the delay before a retry."""
        if claimed.id not in self._leases:  # the lease lapsed while it waited for its lock
            lost = AttemptResult(AttemptOutcome.CANCELLED,
                                 error="lease lost before the run started")
            return lost, None, 0.0
        # The run goes on in this task (no task of its own per run): take_away cancels this
        # task while the run is in _running, which it leaves before any further await.
        current = asyncio.current_task()
        assert current is not None
        self._running[claimed.id] = current
        started = time.perf_counter()
        try:
            result = await self._execute_now(claimed)
        except asyncio.CancelledError:
            if claimed.id not in self._taken_away:
                raise
            self._taken_away.discard(claimed.id)
            if current.uncancel() > 0:  # cancelled from outside too (a drain): stay cancelled
                raise
            killed = self._killed.pop(claimed.id, None)
            live = self._outputs.get(claimed.id)
            output = None if live is None else live.render(self.settings.output_limit_bytes)
            if killed is not None:
                error = f"stopped: the execution was cancelled; {killed}"
            elif claimed.id in self._lingering:
                error = f"the execution was cancelled; {THREAD_NOT_INTERRUPTED}"
            else:
                error = "stopped: the execution was cancelled"
            return AttemptResult(AttemptOutcome.CANCELLED, error=error, output=output), None, 0.0
        finally:
            self._running.pop(claimed.id, None)
            self._killed.pop(claimed.id, None)
            self._outputs.pop(claimed.id, None)
        self.metrics.run_duration.observe(time.perf_counter() - started, claimed.kind)
        self.metrics.runs.inc(claimed.kind, result.outcome)
        policy = RetryPolicy(
            max_attempts=claimed.max_attempts,
            backoff_s=claimed.backoff_s,
            max_backoff_s=claimed.max_backoff_s,
        )
        counted = claimed.attempt - claimed.uncounted_attempts
        state, delay = next_state(result, max(1, counted), policy)
        return result, state, delay

    def _too_late(self, claimed: ClaimedExecution) -> AttemptResult | None:
        """A first attempt that waited past the job's starting deadline is not run."""
        deadline = claimed.starting_deadline_s
        if deadline is None or claimed.attempt != 1:
            return None
        late = (datetime.now(UTC) - claimed.scheduled_for).total_seconds()
        if late <= deadline:
            return None
        return AttemptResult(AttemptOutcome.MISSED,
                             error=f"started {late:.1f}s late, past "
                                   f"starting_deadline_s={deadline:g}")

    async def _take_job_lock(self, claimed: ClaimedExecution,
                             ) -> tuple[JobLock | None, AttemptResult | None]:
        """forbid/replace jobs run under a lock per job (ZooKeeper), released when the run
        ends or, if this worker dies, when its session does."""
        if claimed.concurrency == "allow" or self.coordinator is None:
            return None, None
        wait = 0.5 if claimed.concurrency == "forbid" else min(30.0, claimed.timeout_s)
        try:
            lock = await self.coordinator.acquire_job_lock(claimed.job_id, wait)
        except Exception as exc:  # noqa: BLE001 - ZooKeeper trouble: this try fails
            return None, AttemptResult(AttemptOutcome.FAILED,
                                       error=f"job lock not obtained: {exc!r}")
        if lock is not None:
            return lock, None
        if claimed.concurrency == "forbid":
            return None, AttemptResult(
                AttemptOutcome.SKIPPED,
                error="another run of this job holds its lock (concurrency=forbid)")
        return None, AttemptResult(AttemptOutcome.FAILED,
                                   error=f"job lock not obtained in {wait:g}s")

    async def _close_attempt(self, claimed: ClaimedExecution, outcome: AttemptOutcome,
                             result: AttemptResult) -> None:
        """End the attempt row of a run taken away; if the database is unreachable the
        reaper ends it instead."""
        try:
            await self.store.close_attempt(claimed.id, claimed.attempt, outcome, result.error,
                                           result.output, result.exit_code,
                                           scheduled_for=claimed.scheduled_for)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing attempt %d of %s failed (%r)", claimed.attempt, claimed.id,
                        exc)

    async def _hand_back(self, claimed: ClaimedExecution) -> None:
        try:
            await self.store.hand_back(claimed.id, claimed.attempt, self.name,
                                       scheduled_for=claimed.scheduled_for)
        except Exception as exc:  # noqa: BLE001 - the lease expiry recovers it anyway
            log.warning("hand-back of %s failed (%r); its lease will expire", claimed.id, exc)

    async def _record(self, delivery: Delivery, claimed: ClaimedExecution,
                      result: AttemptResult, state: ExecutionState, delay: float) -> None:
        finished = FinishedAttempt(
            execution_id=claimed.id,
            attempt=claimed.attempt,
            state=state,
            outcome=result.outcome,
            exit_code=result.exit_code,
            error=result.error,
            output=result.output,
            retry_in_s=delay,
            reason=result.error if state in (ExecutionState.MISSED, ExecutionState.SKIPPED)
            else None,
            started_at=self._started_at.pop(claimed.id, None),
            result=result.result,
            workflow_run_id=claimed.workflow_run_id,
            scheduled_for=claimed.scheduled_for,
        )
        committed = await self._commit(finished, claimed.band)
        if committed is None:
            log.warning("execution %s was taken from this worker; its result is dropped",
                        claimed.id)
            await self._close_attempt(claimed, result.outcome, result)
            await delivery.ack()
            return
        self.stats[committed] = self.stats.get(committed, 0) + 1
        log.info("execution %s attempt %d %s", claimed.id, claimed.attempt, committed,
                 extra={"job_id": claimed.job_id, "execution_id": claimed.id,
                        "attempt": claimed.attempt})
        if committed == ExecutionState.RETRYING:
            self.metrics.retries.inc({})
        if committed == ExecutionState.DEAD:
            self.metrics.dead_lettered.inc({"cause": "attempts_exhausted"})
            await delivery.reject(requeue=False)  # dead-lettered by the queue's DLX
        else:
            await delivery.ack()

    async def _commit(self, finished: FinishedAttempt,
                      band: Priority) -> ExecutionState | None:
        """Record a result, retrying through database outages: the ack waits for it. The
        retries stay a second apart at most, so the result is in soon after PostgreSQL is
        back (the leader's reaper waits one lease after an outage)."""
        delay = 0.2
        while True:
            try:
                return await self._results.submit(finished, band)
            except Exception as exc:  # noqa: BLE001
                log.warning("recording result of %s failed (%r); retrying",
                            finished.execution_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _execute_now(self, claimed: ClaimedExecution) -> AttemptResult:
        # A plain function may wait for a task thread: it started when its thread called it
        # (the result says when), not now.
        on_thread = (claimed.kind == "python"
                     and self.registry.on_thread(claimed.payload.get("function", "")))
        # Claimed just ahead of its time: it starts when due. A plain function is queued
        # for the task threads then by its alarm (run_python's due), with the other runs of
        # that instant and without its task being woken; any other run is woken then.
        due: datetime | None = None
        if (on_thread and claimed.workflow_run_id is None
                and "python" not in self.settings.disabled_kinds):
            due = claimed.scheduled_for
        else:
            await self._alarms.until(claimed.scheduled_for)
        node: NodeInputs | None = None
        if claimed.workflow_run_id is not None:
            try:
                node = await self._node_inputs(claimed)
            except Exception as exc:  # noqa: BLE001 - this attempt fails; a retry may not
                return AttemptResult(AttemptOutcome.FAILED,
                                     error=f"the node's inputs could not be read: {exc!r}")
        # A run that never gets a thread (timed out or cancelled first) keeps this one.
        started = datetime.now(UTC) if due is None else max(datetime.now(UTC), due)
        self._started_at[claimed.id] = started
        if not on_thread:
            self._observe_start(claimed, node, started)
            return await self._execute(claimed, node)

        def began(at: float) -> None:  # on the loop, soon after its thread called it
            when = datetime.fromtimestamp(at, UTC)
            if claimed.id in self._started_at:  # not if it ended meanwhile (taken away)
                self._started_at[claimed.id] = when
            self._observe_start(claimed, node, when)

        return await self._execute(claimed, node, due, began)

    def _observe_start(self, claimed: ClaimedExecution, node: NodeInputs | None,
                       started: datetime) -> None:
        """A first attempt's lateness, or a workflow node's wait after its parents."""
        if claimed.attempt != 1:
            return
        if node is None:
            late = (started - claimed.scheduled_for).total_seconds()
            self.metrics.run_lateness.observe(max(0.0, late), claimed.band)
        elif node.ready_at is not None:  # a node is due when its parents let it
            latency = (started - node.ready_at).total_seconds()
            self.metrics.workflow_node_start_latency.observe({}, max(0.0, latency))

    async def _node_inputs(self, claimed: ClaimedExecution) -> NodeInputs:
        """A workflow node's run input and upstream values, read through a short database
        outage (they are committed: every parent ended before the node was queued)."""
        delay = 0.1
        for attempt in range(1, 6):
            try:
                inputs = await self._node_inputs_batch.submit(claimed.id)
                return inputs or NodeInputs({}, {}, None)
            except Exception as exc:
                if attempt == 5:
                    raise
                log.warning("reading the inputs of node execution %s failed (%r); retrying",
                            claimed.id, exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _execute(self, claimed: ClaimedExecution, node: NodeInputs | None = None,
                       due: datetime | None = None,
                       began: Callable[[float], None] | None = None) -> AttemptResult:
        payload = claimed.payload
        limit = self.settings.output_limit_bytes
        timeout = claimed.timeout_s
        kind = claimed.kind
        if kind in self.settings.disabled_kinds:
            return AttemptResult(AttemptOutcome.FAILED,
                                 error=f"{kind} jobs are disabled on this worker "
                                       "(disabled_kinds)")
        # Secret references resolve in the job's own namespace only.
        secrets = self._secrets.for_namespace(claimed.namespace)
        if kind in ("shell", "python"):  # their output is streamed while they run
            # Nothing is resolved yet: what it masks is the worker's own (precomputed).
            output = OutputBuffer(limit + self._secrets.longest_masked)
            self._outputs[claimed.id] = LiveOutput(claimed.attempt, output, secrets)
        if kind == "shell":
            return await run_shell(payload, timeout, limit, self._sandbox, secrets, output)
        if kind == "http":
            return await self._http.run(payload, timeout, limit, secrets)
        if kind == "python":
            context = TaskContext(claimed.id, claimed.attempt, claimed.job_id,
                                  claimed.scheduled_for)
            def linger(ended: asyncio.Future[None]) -> None:
                self._lingering[claimed.id] = ended

            def killed(how: str) -> None:
                self._killed[claimed.id] = how

            return await run_python(payload, timeout, limit, self.registry, context,
                                    self._threads, claimed.band, secrets.masked, node, linger,
                                    killed, output, due, began, self._alarms)
        return AttemptResult(AttemptOutcome.FAILED, error=f"unknown job kind {kind!r}")
