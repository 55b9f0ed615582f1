"""Operations against real services, each test on its own database and cluster name (so its
own queues and ZooKeeper tree): ``jobsched migrate --status``, roles refusing a schema they
do not match, and ``jobsched cluster purge``."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys

import aio_pika
import aiohttp
import aiozk
import asyncpg
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from jobsched.settings import Settings
from jobsched_dev.processes import free_port
from tests.e2e.conftest import LocalCluster
from tests.helpers import AMQP_URL, ROOT, delete_queues, drop_database

pytestmark = pytest.mark.timeout(120)

LAST = "012_workflows.sql"  # the newest migration shipped (a unit test keeps them contiguous)


def jobsched(cluster: LocalCluster, *args: str, stdin: str | None = None,
             **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobsched", *args], input=stdin,
                          env=cluster.env(**env), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def on_a_terminal(cluster: LocalCluster, answer: str,
                  *args: str) -> subprocess.CompletedProcess[str]:
    """``jobsched ARGS`` with a terminal as its stdin, typing ``answer`` to its question."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "jobsched", *args], stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cluster.env(), cwd=ROOT)
        os.write(controller, answer.encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


async def sql(cluster: LocalCluster, statement: str) -> None:
    conn = await asyncpg.connect(cluster.database_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def test_migrate_status_and_roles_refusing_another_schema(
        local_cluster: LocalCluster) -> None:
    current = jobsched(local_cluster, "migrate", "--status")
    assert current.returncode == 0, current.stderr
    assert f"  {LAST}" in current.stdout and "pending" not in current.stdout
    assert current.stdout.rstrip().endswith("migrations applied")

    # behind: the newest migration is not applied
    await sql(local_cluster, f"DELETE FROM schema_migrations WHERE name = '{LAST}'")
    behind = jobsched(local_cluster, "migrate", "--status")
    assert behind.returncode == 1, behind
    assert f"{LAST}" in behind.stdout and "pending" in behind.stdout
    assert "run `jobsched migrate`" in behind.stderr
    port = str(free_port())
    refused = jobsched(local_cluster, "run", "--role", "api", JOBSCHED_API_PORT=port)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"jobsched: the database schema is behind this jobsched: 1 migration(s) not applied "
        f"({LAST}); run `jobsched migrate`")
    refused = jobsched(local_cluster, "run", "--role", "worker",
                       JOBSCHED_METRICS_PORT=str(free_port()))
    assert refused.returncode == 2 and "run `jobsched migrate`" in refused.stderr

    # newer than the code: a migration this version does not ship
    await sql(local_cluster, f"INSERT INTO schema_migrations (version, name) VALUES "
                             f"(12, '{LAST}'), (999, '999_from_the_future.sql')")
    newer = jobsched(local_cluster, "migrate", "--status")
    assert newer.returncode == 3, newer
    assert "999_from_the_future.sql" in newer.stdout and "unknown to this jobsched" in newer.stdout
    refused = jobsched(local_cluster, "run", "--role", "api", JOBSCHED_API_PORT=port)
    assert refused.returncode == 2, refused
    assert "newer than this jobsched" in refused.stderr and "999_from_the_future" in refused.stderr
    assert "Traceback" not in refused.stderr

    # never migrated: no schema at all
    await sql(local_cluster, "DROP TABLE schema_migrations")
    empty = jobsched(local_cluster, "migrate", "--status")
    assert empty.returncode == 1 and "never migrated" in empty.stderr

    unreachable = jobsched(local_cluster, "migrate", "--status",
                           JOBSCHED_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    assert unreachable.returncode == 4 and "cannot reach PostgreSQL" in unreachable.stderr


async def _queues_left(cluster: str) -> list[str]:
    settings = Settings(cluster=cluster)
    left = []
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in (*settings.queue_names.values(), settings.dead_letter_queue):
            channel = await connection.channel()
            try:
                await channel.declare_queue(name, passive=True)
                left.append(name)
                await channel.close()
            except ChannelNotFoundEntity:
                pass
    finally:
        await connection.close()
    return left


async def _znode_exists(zookeeper: str, path: str) -> bool:
    client = aiozk.ZKClient(zookeeper)
    await client.start()
    try:
        return bool(await client.exists(path))
    finally:
        await client.close()


async def test_cluster_purge_refuses_a_live_cluster_then_removes_queues_and_znodes(
        local_cluster: LocalCluster) -> None:
    name = local_cluster.cluster
    other = LocalCluster(tmp=local_cluster.tmp, zookeeper=local_cluster.zookeeper,
                         database=local_cluster.database)  # a second cluster: left alone
    await asyncio.to_thread(local_cluster.start, "scheduler")
    await asyncio.to_thread(local_cluster.start, "worker")
    await asyncio.to_thread(other.start, "worker")
    try:
        assert len(await _queues_left(name)) == 4
        path = f"/jobsched/{name}"
        assert await _znode_exists(local_cluster.zookeeper, path)

        alive = jobsched(local_cluster, "cluster", "purge", name, "--yes")
        assert alive.returncode == 1, alive
        assert f"jobsched: cluster {name} is alive (scheduler " in alive.stderr
        assert "worker worker-1" in alive.stderr and "--force" in alive.stderr
        assert len(await _queues_left(name)) == 4  # nothing was deleted

        for proc in local_cluster.processes:
            await asyncio.to_thread(proc.terminate)
        for _ in range(50):  # until ZooKeeper has dropped the stopped roles' ephemeral nodes
            unconfirmed = jobsched(local_cluster, "cluster", "purge", name, stdin="")
            if "is alive" not in unconfirmed.stderr:
                break
            await asyncio.sleep(0.2)
        assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
        declined = await asyncio.to_thread(on_a_terminal, local_cluster, "n\n",
                                           "cluster", "purge", name)
        assert f"delete all of this for cluster {name}? [y/N]" in declined.stderr
        assert declined.returncode == 1 and "Aborted" in declined.stderr, declined
        assert len(await _queues_left(name)) == 4

        purged = jobsched(local_cluster, "cluster", "purge", name, "--yes")
        assert purged.returncode == 0, purged
        assert f"queue     jobsched.{name}.executions.high" in purged.stdout
        assert f"znodes    {path}" in purged.stdout
        assert purged.stdout.rstrip().endswith("its PostgreSQL database is untouched")
        assert await _queues_left(name) == []
        assert not await _znode_exists(local_cluster.zookeeper, path)
        # the other cluster on the same servers still has everything
        assert len(await _queues_left(other.cluster)) == 4
        assert await _znode_exists(local_cluster.zookeeper, f"/jobsched/{other.cluster}/workers")

        forced = jobsched(local_cluster, "cluster", "purge", other.cluster, "--force", "--yes")
        assert forced.returncode == 0, forced
        assert "--force: purging although alive (worker worker-0" in forced.stderr
        assert f"purged cluster {other.cluster}" in forced.stdout

        again = jobsched(local_cluster, "cluster", "purge", name, "--yes")
        assert again.returncode == 0 and "nothing to purge" in again.stdout
        bad = jobsched(local_cluster, "cluster", "purge", "Not A Name", "--yes")
        assert bad.returncode == 2 and "cluster" in bad.stderr
        down = jobsched(local_cluster, "cluster", "purge", name, "--yes",
                        JOBSCHED_AMQP_URL="amqp://guest:guest@127.0.0.1:1/")
        assert down.returncode == 4, down
        assert down.stderr.splitlines() == [
            "jobsched: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/: "
            "[Errno 111] Connect call failed ('127.0.0.1', 1)"]
    finally:
        other.stop_all()
        await delete_queues(other.cluster)


async def test_a_pg_dump_restored_into_a_new_database_serves_what_was_dumped(
        local_cluster: LocalCluster) -> None:
    """The backup and restore of docs/operations.md, as written there: pg_dump in the
    custom format, pg_restore into a new database, migrate --status, roles pointed at it."""
    await asyncio.to_thread(local_cluster.start, "api")
    async with aiohttp.ClientSession(headers={
            "Authorization": f"Bearer {local_cluster.token}"}) as session:
        async with session.post(local_cluster.api + "/api/v1/jobs", json={
                "name": "kept", "schedule": "0 0 1 1 *", "kind": "shell",
                "shell": {"argv": ["/bin/true"]}}) as response:
            assert response.status == 201
            job = await response.json()
    dump = local_cluster.tmp / "jobsched.dump"
    await asyncio.to_thread(subprocess.run, ["pg_dump", "--format=custom", f"--file={dump}",
                            local_cluster.database_url], check=True, timeout=60)

    restored = LocalCluster(tmp=local_cluster.tmp, zookeeper=local_cluster.zookeeper,
                            cluster=local_cluster.cluster, token=local_cluster.token,
                            database=f"{local_cluster.database}_restored")
    await sql(local_cluster, f'CREATE DATABASE "{restored.database}"')
    try:
        await asyncio.to_thread(subprocess.run, [
            "pg_restore", "--no-owner", "--jobs=2", "-d", restored.database_url, str(dump)],
            check=True, timeout=60)
        status = jobsched(restored, "migrate", "--status")
        assert status.returncode == 0 and "up to date" in status.stdout, status
        local_cluster.stop_all()
        await asyncio.to_thread(restored.start, "api")
        async with aiohttp.ClientSession(headers={
                "Authorization": f"Bearer {local_cluster.token}"}) as session:
            async with session.get(f"{restored.api}/api/v1/jobs/{job['id']}") as response:
                assert response.status == 200
                assert (await response.json())["name"] == "kept"
    finally:
        restored.stop_all()
        await drop_database(restored.database)
