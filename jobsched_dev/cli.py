"""The ``jobsched bench`` and ``jobsched dev`` commands; ``jobsched.cli`` adds them with
:func:`register` when this package can be imported (a source checkout). Every ``jobsched``
command imports this module, role processes included: what the commands need is imported
when they run."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import click

from jobsched_dev.bench.cli import bench


def register(main: click.Group) -> None:
    """Add ``jobsched bench`` and ``jobsched dev`` to the ``jobsched`` command."""
    main.add_command(bench)
    main.add_command(dev)


@click.group()
def dev() -> None:
    """Local development helpers."""


@dev.command("cluster")
@click.option("--database-url", help="PostgreSQL URL (default: the settings' "
              "JOBSCHED_DATABASE_URL); created if missing, then migrated.")
@click.option("--amqp-url", help="RabbitMQ URL (default: the settings' JOBSCHED_AMQP_URL).")
@click.option("--cluster", "name", help="Cluster name: its queues and ZooKeeper paths "
              "(default: the settings' JOBSCHED_CLUSTER).")
@click.option("--zookeeper-port", default=2281, show_default=True, type=click.IntRange(1024,
              60000), help="First client port of the 3-node ensemble (three consecutive "
              "ports; peer/election ports shifted from 2888/3888 by PORT-2181).")
@click.option("--api-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the first api process, the next ones follow (0: any free).")
@click.option("--health-port", default=9100, show_default=True,
              type=click.IntRange(0, 65535), help="Health/metrics port of the first "
              "scheduler, then the other schedulers and the workers follow (0: any free).")
@click.option("--schedulers", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--apis", default=2, show_default=True, type=click.IntRange(1, 9))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 9))
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions the workers run (repeatable).")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Logs and ZooKeeper data (default /tmp/jobsched-dev-CLUSTER).")
@click.option("--no-supervise", is_flag=True, help="Do not restart processes that die.")
@click.pass_context
def dev_cluster(ctx: click.Context, database_url: str | None, amqp_url: str | None,
                name: str | None, zookeeper_port: int, api_port: int, health_port: int,
                schedulers: int, apis: int, workers: int, imports: tuple[str, ...],
                directory: str | None, no_supervise: bool) -> None:
    """Start ZooKeeper (3 members), then schedulers, api processes and workers as separate
    processes; print where they listen; restart what dies; stop all on Ctrl-C/SIGTERM."""
    from jobsched.settings import ConfigError, load_settings
    from jobsched_dev.devcluster import ClusterError, DevCluster
    from jobsched_dev.processes import ProcessFailed
    from jobsched_dev.zookeeper import ZooKeeperError

    root = ctx.find_root()
    try:
        settings = load_settings({"database_url": database_url, "amqp_url": amqp_url,
                                  "cluster": name},
                                 config_path=root.obj.get("config") if root.obj else None)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    folder = Path(directory or f"/tmp/jobsched-dev-{settings.cluster}")
    cluster = DevCluster(
        directory=folder, database_url=settings.database_url, amqp_url=settings.amqp_url,
        cluster=settings.cluster, zookeeper_port=zookeeper_port, api_port=api_port,
        health_port=health_port, schedulers=schedulers, apis=apis, workers=workers,
        imports=imports, die_with_parent=True,
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        click.echo(f"starting ZooKeeper on 127.0.0.1:{zookeeper_port}-{zookeeper_port + 2}, "
                   f"migrating, then {schedulers} schedulers, {apis} api, {workers} workers")
        cluster.start()
        for line in cluster.describe():
            click.echo(line)
        if settings.auth_enabled:
            click.echo(f"  token      {_dev_token(settings.database_url)}  (admin of namespace "
                       "'default', valid 24 h: Authorization: Bearer ...)")
        click.echo("ready; Ctrl-C stops everything")
        if no_supervise:
            while not stopping:
                time.sleep(0.5)
        else:
            cluster.supervise(lambda: stopping, lambda m: click.echo(f"supervisor: {m}",
                                                                     err=True))
    except (ClusterError, ProcessFailed, ZooKeeperError) as exc:
        click.echo(f"jobsched: {exc}", err=True)
        code = 1
    else:
        code = 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo("stopping: api, workers (drain), schedulers, ZooKeeper")
        try:
            cluster.stop()
        except (ClusterError, ZooKeeperError) as exc:
            click.echo(f"jobsched: {exc}", err=True)
            code = 1
        click.echo("stopped")
    sys.exit(code)


def _dev_token(database_url: str) -> str:
    """An admin token for the default namespace, so the API can be used at once."""
    from datetime import timedelta

    from jobsched.token_admin import create_token

    token, _ = asyncio.run(create_token(database_url, "default", "admin",
                                        "jobsched dev cluster", timedelta(days=1)))
    return token
