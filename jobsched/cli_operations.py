"""Operator commands that work on the services directly, not through the api:
``jobsched migrate --status`` and ``jobsched cluster purge NAME`` (docs/operations.md).

Exit codes of ``migrate --status``: 0 the schema is current, 1 migrations are pending,
3 the database has migrations this jobsched does not ship (it is newer), 4 the database
could not be read. ``cluster purge``: 0 purged (or nothing to purge), 1 refused (the cluster
is alive) or failed, 2 usage (a bad name, no --yes without a terminal), 4 a service could not
be reached.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC

import click

from jobsched.settings import ConfigError, Settings, load_settings, mask_url

EXIT_OK = 0
EXIT_BEHIND = 1
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NEWER = 3
EXIT_UNREACHABLE = 4


def migrate_status(settings: Settings) -> int:
    """Print every migration, applied (when) or pending, and the verdict; return the exit
    code (see the module)."""
    from jobsched.adapters.postgres.migrate import mismatch_message, schema_status

    try:
        status = asyncio.run(schema_status(settings.database_url))
    except (OSError, ConnectionError) as exc:
        click.echo(f"jobsched: cannot reach PostgreSQL: {exc}", err=True)
        return EXIT_UNREACHABLE
    except Exception as exc:  # noqa: BLE001 - asyncpg errors: one clear line, not a traceback
        click.echo(f"jobsched: cannot read the schema: {exc}", err=True)
        return EXIT_UNREACHABLE
    click.echo(f"database: {mask_url(settings.database_url)}")
    width = max([len(name) for _, name in status.available] + [len(n) for n in status.unknown]
                + [9])
    for version, name in status.available:
        if version in status.applied:
            at = status.applied[version][1]
            when = f" {at.astimezone(UTC):%Y-%m-%d %H:%M:%SZ}" if at else ""
            click.echo(f"  {name:<{width}}  applied{when}")
        else:
            click.echo(f"  {name:<{width}}  " + click.style("pending", fg="yellow"))
    for name in status.unknown:
        click.echo(f"  {name:<{width}}  " + click.style("applied, unknown to this jobsched",
                                                       fg="red"))
    message = mismatch_message(status)
    if message is None:
        click.echo(f"up to date: {len(status.available)} of {len(status.available)} "
                   "migrations applied")
        return EXIT_OK
    click.echo(f"jobsched: {message}", err=True)
    return EXIT_NEWER if status.unknown else EXIT_BEHIND


@click.command("purge")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Purge even while schedulers, workers or consumers of it are alive.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--amqp-url", help="RabbitMQ URL (JOBSCHED_AMQP_URL).")
@click.option("--zookeeper-hosts", help="ZooKeeper hosts (JOBSCHED_ZOOKEEPER_HOSTS).")
@click.pass_context
def cluster_purge(ctx: click.Context, name: str, force: bool, yes: bool,
                  amqp_url: str | None, zookeeper_hosts: str | None) -> None:
    """Remove cluster NAME's RabbitMQ queues (their messages too) and exchange, and its
    ZooKeeper tree. Refused while a scheduler or worker of it is registered or anything
    consumes its queues, unless --force. Its PostgreSQL database is left alone.

    \b
      jobsched cluster purge staging-old --yes
    """
    from jobsched.cluster_admin import Unreachable, inspect_cluster, purge_cluster

    root = ctx.find_root()
    try:
        settings = load_settings({"cluster": name, "amqp_url": amqp_url,
                                  "zookeeper_hosts": zookeeper_hosts},
                                 config_path=root.obj.get("config") if root.obj else None)
    except ConfigError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(EXIT_USAGE)

    try:
        found = asyncio.run(inspect_cluster(settings))
    except Unreachable as exc:
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except Exception as exc:  # noqa: BLE001 - aio-pika/aiozk errors: one line, no traceback
        click.echo(f"jobsched: cannot inspect cluster {name}: {exc!r}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if found.empty:
        click.echo(f"cluster {name}: nothing to purge (no queues, exchange or ZooKeeper "
                   f"tree {found.zookeeper_path})")
        return
    click.echo(f"cluster {name}:")
    for queue in found.queues:
        click.echo(f"  queue     {queue.name} ({queue.messages} message(s), "
                   f"{queue.consumers} consumer(s))")
    for exchange in found.exchanges:
        click.echo(f"  exchange  {exchange}")
    if found.zookeeper_exists:
        click.echo(f"  znodes    {found.zookeeper_path} (and everything under it)")
    alive = found.alive
    if alive and not force:
        click.echo(f"jobsched: cluster {name} is alive ({'; '.join(alive)}): stop its roles "
                   "first, or purge anyway with --force", err=True)
        sys.exit(EXIT_REFUSED)
    if alive:
        click.echo(f"--force: purging although alive ({'; '.join(alive)})", err=True)
    if not yes:
        if not sys.stdin.isatty():
            click.echo("jobsched: not a terminal: confirm with --yes", err=True)
            sys.exit(EXIT_USAGE)
        click.confirm(f"delete all of this for cluster {name}?", abort=True, err=True)
    try:
        asyncio.run(purge_cluster(settings, found))
    except Exception as exc:  # noqa: BLE001 - aio-pika/aiozk errors: one line, no traceback
        click.echo(f"jobsched: purging cluster {name} failed: {exc!r}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"purged cluster {name}: {len(found.queues)} queue(s), "
               f"{len(found.exchanges)} exchange(s)"
               + (f", ZooKeeper {found.zookeeper_path}" if found.zookeeper_exists else "")
               + "; its PostgreSQL database is untouched")


def register(main: click.Group) -> None:
    """``cluster purge`` joins ``cluster status`` (jobsched/cli_client.py)."""
    from jobsched.cli_client import cluster

    cluster.add_command(cluster_purge)
