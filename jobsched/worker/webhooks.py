"""The worker role's webhook deliveries: lease due deliveries (``FOR UPDATE SKIP LOCKED``,
so any number of workers share them and a dead one's come due again when its lease
lapses), POST each one signed as Standard Webhooks says, record the outcome in batches.

Woken by NOTIFY on ``jobsched_webhooks`` (the outbox triggers send it when they write a
delivery), with a bounded poll behind it for retries falling due. Each endpoint gets at
most ``webhook_endpoint_concurrency`` of this worker's ``webhook_concurrency`` slots, so a
slow or dead receiver holds its own share and nobody else's. Connections go through the
egress policy (``egress_session``): no loopback, link-local or metadata address unless
allowed, no redirects followed, no cookies kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from jobsched import __version__
from jobsched.backoff import sleep_unless
from jobsched.batching import Batcher
from jobsched.crypto import SecretBox, SecretsKeyError
from jobsched.domain.egress import EgressPolicy
from jobsched.domain.webhooks import (
    ANSWER_EXCERPT_BYTES,
    DeliveryState,
    Verdict,
    delivery_body,
    judge_answer,
    next_attempt_at,
)
from jobsched.metrics import Metrics
from jobsched.ports import DeliveryResult, DueDelivery, WebhookDeliveryStore
from jobsched.settings import Settings
from jobsched.worker.egress import EgressRefused, egress_session

log = logging.getLogger(__name__)

USER_AGENT = f"jobsched-webhooks/{__version__}"
#: A lease outlives the attempt's timeout by this much: the claim, the signing and the
#: recording of the result fit in it.
LEASE_MARGIN_S = 10.0
#: How often the oldest-pending gauge is read. (Old deliveries are the leader's to purge,
#: in its retention pass: jobsched.scheduler.retention.)
GAUGE_INTERVAL_S = 15.0
#: The event loop's lag is sampled this often; above SATURATED_LAG_S (smoothed) the
#: process is out of CPU, and until it is not, each endpoint gets one delivery at a time
#: and the worker sends at most ``webhook_saturated_rate`` a second: the jobs this worker
#: runs come first, webhooks (asynchronous anyway) never stop and catch up after, and a
#: hung receiver still holds only its own slot.
LAG_PROBE_S = 0.1
SATURATED_LAG_S = 0.05


def sanitized(text: str) -> str:
    """PostgreSQL's text cannot hold NUL: a receiver's answer may."""
    return text.replace("\x00", "\ufffd")


class WebhookDeliverer:
    def __init__(self, settings: Settings, store: WebhookDeliveryStore, box: SecretBox,
                 policy: EgressPolicy, metrics: Metrics | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.store = store
        self.box = box
        self.policy = policy
        self.metrics = metrics or Metrics("worker", settings.instance)
        self.clock = clock
        self.rand = rand
        self.name = settings.instance
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        #: Set by NOTIFY (and when a slot frees while more may be due): claim now.
        self.wake = asyncio.Event()
        #: Every delivery of this worker until its attempt is recorded (what a drain waits
        #: for); a slot is held only while its request is out (``_sending``), so recording
        #: never keeps the next request to an endpoint waiting.
        self._tasks: dict[tuple[uuid.UUID, uuid.UUID], asyncio.Task[None]] = {}
        self._sending: set[tuple[uuid.UUID, uuid.UUID]] = set()
        self._per_endpoint: Counter[uuid.UUID] = Counter()
        self._more_due = False
        self._secrets: dict[bytes, str] = {}
        self._results: Batcher[DeliveryResult, None] = Batcher(self._record_batch,
                                                               max_size=500)
        self._session: aiohttp.ClientSession | None = None
        self._lag = 0.0  # smoothed event-loop lag, seconds
        #: While throttled: deliveries that may still be claimed (a token bucket holding up
        #: to one second of ``webhook_saturated_rate``), and when it was last filled.
        self._tokens = max(settings.webhook_saturated_rate, 1.0)
        self._filled = time.monotonic()
        self._refill: asyncio.TimerHandle | None = None
        self.stats = {"succeeded": 0, "failed": 0, "exhausted": 0, "gone": 0, "dropped": 0}

    def on_notify(self, _payload: str = "") -> None:
        self.wake.set()

    def describe(self) -> dict[str, object]:
        return {"inflight": len(self._sending), "throttled": self.throttled, **self.stats}

    @property
    def throttled(self) -> bool:
        """The process is out of CPU (its loop lags): one delivery per endpoint at a time."""
        return self._lag > SATURATED_LAG_S

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._session = egress_session(self.policy, limit=self.settings.webhook_concurrency)
        housekeeping = asyncio.create_task(self._housekeeping(stop))
        lag = asyncio.create_task(self._watch_lag(stop))
        log.info("webhook deliveries: up to %d at once, %d per endpoint",
                 self.settings.webhook_concurrency, self.settings.webhook_endpoint_concurrency)
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    await self.claim_and_send()
                except Exception as exc:  # noqa: BLE001 - the database may be restarting
                    log.warning("claiming webhook deliveries failed (%r)", exc)
                    await sleep_unless(stop, 1.0)
                    continue
                # A claim takes all that this worker has slots for: the next one waits
                # for a slot to free (which wakes it if more may be due), a NOTIFY, or
                # the poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken(stop), self.settings.webhook_poll_s)
        finally:
            housekeeping.cancel()
            lag.cancel()
            if self._refill is not None:
                self._refill.cancel()
            await self._drain()
            await asyncio.gather(housekeeping, lag, return_exceptions=True)
            await self._results.close()
            await self._session.close()

    async def _woken(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _free_slots(self) -> int:
        return self.settings.webhook_concurrency - len(self._sending)

    async def _watch_lag(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            was = self.throttled
            self._lag = 0.7 * self._lag + 0.3 * max(0.0, loop.time() - began - LAG_PROBE_S)
            if was and not self.throttled:
                self.wake.set()  # full speed again: claim what waited

    def _paced(self, slots: int) -> int:
        """How many of ``slots`` may be claimed now: all of them unless throttled; then what
        the token bucket holds, and with none a wake-up is set for when one will be."""
        rate = self.settings.webhook_saturated_rate
        now = time.monotonic()
        self._tokens = min(max(rate, 1.0), self._tokens + (now - self._filled) * rate)
        self._filled = now
        if not self.throttled:
            self._tokens = max(rate, 1.0)  # a lag begins with one second's worth
            return slots
        if self._tokens < 1.0:
            self._wake_when_refilled()
            return 0
        return min(slots, int(self._tokens))

    def _wake_when_refilled(self) -> None:
        """Claim again when the bucket holds a delivery (more is due than it held)."""
        if self._refill is None:
            delay = max(0.0, 1.0 - self._tokens) / self.settings.webhook_saturated_rate
            self._refill = asyncio.get_running_loop().call_later(delay, self._refilled)

    def _refilled(self) -> None:
        self._refill = None
        self.wake.set()

    async def claim_and_send(self) -> int:
        """Lease what this worker has slots for and start sending it; returns how many."""
        slots = self._free_slots()
        if slots > 0:
            slots = self._paced(slots)
        if slots <= 0:
            self._more_due = True
            return 0
        per_endpoint = 1 if self.throttled else self.settings.webhook_endpoint_concurrency
        free = {endpoint: per_endpoint - busy for endpoint, busy in self._per_endpoint.items()
                if busy > 0}
        claimed = await self.store.claim_deliveries(self.name, self.lease_s, limit=slots,
                                                    per_endpoint=per_endpoint, free=free)
        if self.throttled:
            self._tokens -= len(claimed)
        taken = Counter(d.endpoint_id for d in claimed)
        # More may be due than this claim could take: it used every free slot, or every
        # slot of an endpoint (those with none free were not even asked about).
        self._more_due = (len(claimed) >= slots
                          or any(slots_left <= 0 for slots_left in free.values())
                          or any(count >= free.get(endpoint, per_endpoint)
                                 for endpoint, count in taken.items()))
        if self._more_due and self.throttled and self._tokens < 1.0:
            self._wake_when_refilled()
        for delivery in claimed:
            key = (delivery.endpoint_id, delivery.event_id)
            self._per_endpoint[delivery.endpoint_id] += 1
            self._sending.add(key)
            task = asyncio.create_task(self._deliver(delivery, key))
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        self.metrics.webhook_inflight.set({}, len(self._sending))
        return len(claimed)

    def _release(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        """The request is over: its slot is free (more may be claimed at once)."""
        if key not in self._sending:
            return
        self._sending.discard(key)
        endpoint = key[0]
        self._per_endpoint[endpoint] -= 1
        if self._per_endpoint[endpoint] <= 0:
            del self._per_endpoint[endpoint]
        self.metrics.webhook_inflight.set({}, len(self._sending))
        if self._more_due:
            self.wake.set()

    def _forget(self, key: tuple[uuid.UUID, uuid.UUID], _task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        self._release(key)

    async def _drain(self) -> None:
        """Deliveries in flight finish (or time out) and are recorded; any still going
        after that are abandoned to their leases."""
        if not self._tasks:
            return
        log.info("finishing %d webhook deliveries in flight", len(self._tasks))
        tasks = list(self._tasks.values())
        _, pending = await asyncio.wait(tasks, timeout=self.settings.webhook_timeout_s + 5)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)

    # --- one attempt -------------------------------------------------------------------

    async def _deliver(self, delivery: DueDelivery, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        try:
            result = await self.attempt(delivery)
        except Exception:  # never lose the loop to one delivery
            log.exception("webhook delivery %s to %s failed unexpectedly", delivery.event_id,
                          delivery.url)
            return
        finally:
            self._release(key)
        await self._record(result)

    def _secret(self, sealed: bytes) -> str:
        secret = self._secrets.get(sealed)
        if secret is None:
            secret = self.box.open(sealed).decode()
            if len(self._secrets) >= 1000:
                self._secrets.clear()
            self._secrets[sealed] = secret
        return secret

    def signed_headers(self, delivery: DueDelivery, body: bytes,
                       moment: datetime) -> dict[str, str]:
        """Standard Webhooks' headers; during a rotation's overlap, one signature per
        secret (the new one first), space-separated."""
        stamp = moment.astimezone(UTC).replace(microsecond=0)
        text = body.decode()
        sealed = [delivery.secret] + ([delivery.previous_secret]
                                      if delivery.previous_secret else [])
        signatures = [Webhook(self._secret(s)).sign(str(delivery.event_id), stamp, text)
                      for s in sealed]
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": str(delivery.event_id),
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": " ".join(signatures),
        }

    async def attempt(self, delivery: DueDelivery) -> DeliveryResult:
        """POST the delivery once; what happened, ready to record."""
        assert self._session is not None, "run() opens the session"
        body = delivery_body(delivery.event_type, delivery.created_at, delivery.data)
        status: int | None = None
        error: str | None = None
        answer: str | None = None
        started = time.perf_counter()
        try:
            refusal = self.policy.literal_refusal(delivery.url)
            if refusal is not None:  # a literal address never reaches the resolver
                raise EgressRefused(refusal)
            headers = self.signed_headers(delivery, body, self.clock())
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
            async with self._session.post(delivery.url, data=body, headers=headers,
                                          allow_redirects=False, timeout=timeout) as response:
                status = response.status
                answer = sanitized((await _read_excerpt(response)).decode("utf-8", "replace"))
            if not 200 <= status < 300:
                error = f"answered {status}" + (
                    f" (redirects are not followed: {response.headers.get('Location')})"
                    if 300 <= status < 400 else "")
        except SecretsKeyError as exc:
            error = f"cannot sign: {exc}"
        except EgressRefused as exc:
            error = f"refused by the egress rules: {exc}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except ValueError as exc:  # e.g. a URL aiohttp cannot use
            error = f"cannot send: {exc}"
        duration = time.perf_counter() - started
        verdict = judge_answer(status, delivery.attempt)
        if verdict == Verdict.DELIVERED:
            error = None
        retry_at = (next_attempt_at(delivery.attempt, self.clock(), self.rand)
                    if verdict in (Verdict.RETRY, Verdict.GONE) else None)
        state = {Verdict.DELIVERED: DeliveryState.SUCCEEDED,
                 Verdict.EXHAUSTED: DeliveryState.EXHAUSTED}.get(verdict, DeliveryState.FAILED)
        if verdict == Verdict.GONE:
            error = "answered 410 Gone: the endpoint is disabled"
        self.metrics.webhook_deliveries.inc({"outcome": verdict.value})
        self.metrics.webhook_attempt_duration.observe({}, duration)
        self.stats[verdict.value] = self.stats.get(verdict.value, 0) + 1
        log.log(logging.DEBUG if error is None else logging.INFO,
                "webhook %s %s to %s attempt %d: %s", delivery.event_type, delivery.event_id,
                delivery.url, delivery.attempt, error or status,
                extra={"event_id": str(delivery.event_id)})
        return DeliveryResult(
            endpoint_id=delivery.endpoint_id, event_id=delivery.event_id,
            attempt=delivery.attempt, state=state.value, next_attempt_at=retry_at,
            status=status, error=sanitized(error) if error else None, answer=answer,
            duration_ms=duration * 1000, gone=verdict == Verdict.GONE)

    # --- results -----------------------------------------------------------------------

    async def _record_batch(self, results: list[DeliveryResult]) -> list[None]:
        recorded = await self.store.record_attempts(results, self.name)
        if recorded < len(results):
            self.stats["dropped"] += len(results) - recorded
        return [None] * len(results)

    async def _record(self, result: DeliveryResult) -> None:
        """Record through a database outage for as long as the lease lasts; after that the
        delivery is another worker's to send again (at least once)."""
        deadline = time.monotonic() + self.lease_s
        delay = 0.2
        while True:
            try:
                await self._results.submit(result)
                return
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() + delay > deadline:
                    log.warning("could not record webhook delivery %s (%r); it will be sent "
                                "again when its lease lapses", result.event_id, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- gauge ------------------------------------------------------------------------

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                oldest = await self.store.oldest_pending()
                age = 0.0 if oldest is None else max(0.0, (self.clock() - oldest)
                                                     .total_seconds())
                self.metrics.webhook_oldest_pending.set({}, age)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("webhook housekeeping failed (%r)", exc)
            await sleep_unless(stop, GAUGE_INTERVAL_S)


async def _read_excerpt(response: aiohttp.ClientResponse) -> bytes:
    """The first ANSWER_EXCERPT_BYTES of the answer; the rest is not read."""
    chunks: list[bytes] = []
    size = 0
    while size < ANSWER_EXCERPT_BYTES:
        chunk = await response.content.read(ANSWER_EXCERPT_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
