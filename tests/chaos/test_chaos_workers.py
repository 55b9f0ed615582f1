"""Scenarios 3, 7 and 8: a worker killed mid-job, the same message delivered twice, and
SIGTERM to a worker mid-job. A run is never lost, and never runs twice at once."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator

import aio_pika
import aiohttp
import pytest

from jobsched.messages import AttemptMessage
from jobsched_dev.devcluster import DevCluster
from tests.chaos.conftest import DRAIN_TIMEOUT_S, LEASE_S, Chaos, chaos_deployment
from tests.chaos.harness import (
    ApiClient,
    Fire,
    PrivatePostgres,
    assert_one_execution_per_fire,
    assert_ran_once_per_fire,
    fetch_attempts,
    fetch_fires,
    immediate,
    record,
    wait_terminal,
)
from tests.helpers import AMQP_URL

REAP_INTERVAL_S = 1.0


async def _running(chaos: Chaos, job_id: str, timeout: float = 20) -> Fire:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fires = await chaos.fires([job_id])
        if fires and fires[0].state == "running":
            return fires[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran: {await chaos.fires([job_id])}")


@pytest.mark.timeout(90)
async def test_worker_killed_mid_job(chaos: Chaos) -> None:
    """Scenario 3: kill -9 the worker running a 5 s job; another worker runs a second
    attempt within lease + reaper interval, and the execution succeeds."""
    [job] = await chaos.create([immediate("killed-mid-job", "chaos_tasks:sleep", seconds=5)])
    first = await _running(chaos, job)
    await asyncio.sleep(1.5)
    victim = chaos.cluster[first.worker or ""]
    killed_at = time.time()
    victim.kill()

    [execution] = await wait_terminal(chaos.database_url, [job], timeout=40)
    assert execution.state == "succeeded", execution
    attempts = await fetch_attempts(chaos.database_url, execution.id)
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"], attempts
    assert attempts[1]["worker"] != victim.name
    restarted_after = attempts[1]["started_at"].timestamp() - killed_at
    runs = chaos.runlog.read([job])
    assert [(r["event"], r["attempt"]) for r in runs] == [
        ("start", 1), ("start", 2), ("end", 2)], runs
    assert_ran_once_per_fire(runs)
    record("worker_kill9_mid_job", second_attempt_after_s=round(restarted_after, 2))
    assert restarted_after <= LEASE_S + REAP_INTERVAL_S + 0.5, restarted_after


@pytest.mark.timeout(90)
async def test_duplicate_delivery_runs_once(chaos: Chaos) -> None:
    """Scenario 7: every execution's message is delivered three times (while it waits,
    while it runs, and after it finished); each execution runs once."""
    jobs = await chaos.create([immediate(f"dup-{i}", "chaos_tasks:sleep", seconds=1.0)
                               for i in range(20)])
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = f"jobsched.{chaos.cluster.cluster}.executions"

        async def deliver(fires: list[Fire]) -> None:
            await asyncio.gather(*(channel.default_exchange.publish(
                aio_pika.Message(AttemptMessage(uuid.UUID(f.id), uuid.UUID(f.job_id),
                                                f.attempt).encode()),
                routing_key=queue) for f in fires))

        deadline = time.monotonic() + 20
        fires: list[Fire] = []
        while len(fires) < len(jobs) and time.monotonic() < deadline:
            fires = await chaos.fires(jobs)
        await deliver(fires)  # mostly still queued: copies race the originals
        await asyncio.sleep(0.5)
        await deliver(await chaos.fires(jobs))  # mostly running
        fires = await wait_terminal(chaos.database_url, jobs, timeout=30)
        await deliver(fires)  # finished
        await asyncio.sleep(2)
    finally:
        await connection.close()

    fires = await wait_terminal(chaos.database_url, jobs, timeout=10)
    assert_one_execution_per_fire(fires)
    assert {f.state for f in fires} == {"succeeded"}
    assert {f.attempt for f in fires} == {1}
    runs = chaos.runlog.read(jobs)
    starts = [r for r in runs if r["event"] == "start"]
    assert len(starts) == len(jobs), starts
    assert len(assert_ran_once_per_fire(runs)) == len(jobs)
    record("duplicate_delivery", executions=len(jobs), deliveries=3 * len(jobs) + len(jobs),
           runs=len(starts))


async def _sigterm(chaos: Chaos, name: str) -> float:
    """SIGTERM, wait for a clean exit; how long the drain took."""
    worker = chaos.cluster[name]
    assert worker.process is not None
    stopped_at = time.time()
    worker.signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(worker.process.wait, 30)
    assert exit_code == 0, worker.log_tail()
    return time.time() - stopped_at


@pytest.mark.timeout(120)
async def test_sigterm_worker_mid_job(chaos: Chaos) -> None:
    """Scenario 8: SIGTERM to a worker mid-job. A job that ends within the drain timeout
    finishes there; a longer one is handed back and run by the other worker."""
    [short] = await chaos.create([immediate("drained", "chaos_tasks:sleep", seconds=2.5)])
    running = await _running(chaos, short)
    await asyncio.sleep(0.5)
    drained_in = await _sigterm(chaos, running.worker or "")
    [fire] = await wait_terminal(chaos.database_url, [short], timeout=20)
    assert (fire.state, fire.attempt, fire.worker) == ("succeeded", 1, running.worker), fire
    chaos.cluster.restart(running.worker or "", wait=True)

    [long_] = await chaos.create([immediate("handed-back", "chaos_tasks:sleep",
                                            seconds=DRAIN_TIMEOUT_S + 6)])
    running = await _running(chaos, long_)
    await asyncio.sleep(0.5)
    stopped_at = time.time()
    handed_back_in = await _sigterm(chaos, running.worker or "")
    [fire] = await wait_terminal(chaos.database_url, [long_], timeout=40)
    assert fire.state == "succeeded", fire
    attempts = await fetch_attempts(chaos.database_url, fire.id)
    assert [a["outcome"] for a in attempts] == ["cancelled", "succeeded"], attempts
    assert attempts[1]["worker"] != running.worker
    runs = chaos.runlog.read([long_])
    assert [(r["event"], r["attempt"]) for r in runs] == [
        ("start", 1), ("stopped", 1), ("start", 2), ("end", 2)], runs
    assert_ran_once_per_fire(chaos.runlog.read([short, long_]))
    assert await _dead_lettered(chaos, fire.id) == 0
    record("sigterm_worker_mid_job", drain_exit_s=round(drained_in, 2),
           hand_back_exit_s=round(handed_back_in, 2),
           handed_back_restart_s=round(attempts[1]["started_at"].timestamp() - stopped_at, 2))


async def _dead_lettered(chaos: Chaos, execution_id: str) -> int:
    """How many messages of this execution sit in the dead-letter queue."""
    connection = await aio_pika.connect(AMQP_URL)
    found = 0
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"jobsched.{chaos.cluster.cluster}.dead",
                                            passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            found += execution_id in message.body.decode()
            await message.ack()
    finally:
        await connection.close()
    return found


@pytest.fixture
def small_workers(private_postgres: PrivatePostgres,
                  request: pytest.FixtureRequest) -> Iterator[tuple[DevCluster, str]]:
    """A deployment of its own whose two workers run 4 runs at once and hold 50 more."""
    url = private_postgres.url(f"crash{uuid.uuid4().hex[:8]}")
    env = {"JOBSCHED_WORKER_CONCURRENCY": "4", "JOBSCHED_WORKER_PREFETCH": "50"}
    with chaos_deployment(url, "crash", request, env=env, schedulers=1, apis=1,
                          workers=2) as cluster:
        yield cluster, url


@pytest.mark.timeout(150)
async def test_a_worker_crash_costs_no_execution(
        small_workers: tuple[DevCluster, str]) -> None:
    """Scenario 10 (issue 21): kill -9 a worker holding a backlog, with the default retry
    policy (one attempt). Its running attempts are lost, not failed: they run again and
    succeed; the deliveries it held but had not started were never claimed, so they cost
    no attempt at all. Nothing ends dead."""
    cluster, url = small_workers
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, cluster.api_urls)
        specs = [{**immediate(f"crash-{i}", "chaos_tasks:sleep", seconds=1.0),
                  "retry": {"max_attempts": 1}} for i in range(40)]
        jobs = [job["id"] for job in await asyncio.gather(*(api.create(s) for s in specs))]
        started = time.monotonic()
        running: list[Fire] = []
        while time.monotonic() < started + 20:
            fires = await fetch_fires(url, jobs)
            running = [f for f in fires if f.state == "running"]
            # Both workers busy is the usual case; one that got the whole backlog (the
            # other's consumer came up after it was delivered) is the same scenario.
            if len({f.worker for f in running}) == 2 or (
                    running and time.monotonic() > started + 5):
                break
            await asyncio.sleep(0.05)
        assert running, "no run started within 20 s"
        victim = cluster[running[0].worker or ""]
        victim.kill()
        fires = await wait_terminal(url, jobs, timeout=90)
    assert_one_execution_per_fire(fires)
    assert {f.state for f in fires} == {"succeeded"}, [f for f in fires if f.state != "succeeded"]
    lost = []
    for fire in fires:
        attempts = await fetch_attempts(url, fire.id)
        lost += [a for a in attempts if a["outcome"] == "lost"]
    # Only the runs the victim had started lost an attempt (at most its 4 run slots): the
    # deliveries it held unstarted were never claimed.
    assert {a["worker"] for a in lost} == {victim.name} and 1 <= len(lost) <= 4, lost
    record("worker_crash_backlog", executions=len(fires), lost_attempts=len(lost), dead=0)
