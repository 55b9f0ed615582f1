"""The ``jobsched`` command: parses options and hands off; no logic lives here."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from jobsched import __version__
from jobsched.settings import ConfigError, Settings, load_settings

ROLE_CHOICES = ("api", "scheduler", "worker", "all")


def _settings(ctx: click.Context, flags: dict[str, Any]) -> Settings:
    try:
        return load_settings(flags, config_path=ctx.obj.get("config") if ctx.obj else None)
    except ConfigError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        ctx.exit(2)
        raise  # unreachable: ctx.exit raises


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="TOML settings file (also JOBSCHED_CONFIG).")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """jobsched: a distributed job scheduler."""
    ctx.obj = {"config": config}


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"jobsched {__version__}")


@main.command()
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.option("--create-db", is_flag=True, help="Create the database first if it is missing.")
@click.pass_context
def migrate(ctx: click.Context, database_url: str | None, create_db: bool) -> None:
    """Apply pending schema migrations (idempotent, under an advisory lock)."""
    from jobsched.adapters import postgres

    settings = _settings(ctx, {"database_url": database_url})

    async def run() -> list[str]:
        if create_db and await postgres.create_database(settings.database_url):
            click.echo("created the database")
        return await postgres.migrate(settings.database_url)

    try:
        applied = asyncio.run(run())
    except (OSError, ConnectionError) as exc:
        click.echo(f"jobsched: cannot reach PostgreSQL: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - asyncpg errors: one clear line, not a traceback
        click.echo(f"jobsched: migration failed: {exc}", err=True)
        sys.exit(1)
    names = f": {', '.join(applied)}" if applied else ""
    click.echo(f"applied {len(applied)} migration(s){names}")


@main.command()
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(ROLE_CHOICES),
              help="Role to host; repeat to host several in one process; 'all' hosts every role.")
@click.option("--migrate", "run_migrate", is_flag=True, help="Apply migrations before starting.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions this worker runs (repeatable).")
@click.option("--database-url")
@click.option("--amqp-url")
@click.option("--zookeeper-hosts")
@click.option("--cluster")
@click.option("--instance", help="Name of this process in logs and the cluster view.")
@click.option("--api-host")
@click.option("--api-port", type=int)
@click.option("--metrics-port", type=int)
@click.option("--log-format", type=click.Choice(["json", "text"]))
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.pass_context
def run(ctx: click.Context, roles: tuple[str, ...], run_migrate: bool, imports: tuple[str, ...],
        **flags: Any) -> None:
    """Run one or more roles in one event loop until SIGTERM or SIGINT."""
    import logging

    from jobsched.logs import configure_logging
    from jobsched.runtime import ROLES, serve

    if imports:
        flags["imports"] = imports
    settings = _settings(ctx, flags)
    hosted = set(ROLES) if "all" in roles else set(roles)
    configure_logging(settings.log_format, settings.log_level, "+".join(sorted(hosted)),
                      settings.instance)
    logging.getLogger("jobsched").info("settings: %s", settings.masked())
    try:
        code = asyncio.run(serve(settings, hosted, migrate=run_migrate))
    except ImportError as exc:
        click.echo(f"jobsched: cannot import task module: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


# The API client commands (jobs, executions, cluster) live in their own module.
from jobsched.cli_client import register as register_client_commands  # noqa: E402

register_client_commands(main)


@main.group()
def bench() -> None:
    """Benchmark scenarios against a running cluster (see docs/benchmarks.md)."""


@bench.command("immediate")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True,
              help="Base URL of an api process.")
@click.option("--count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--kind", type=click.Choice(["python", "shell"]), default="python",
              show_default=True, help="python needs workers started with "
              "--import jobsched.bench.tasks.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the result here.")
def bench_immediate(url: str, count: int, kind: str, json_out: str | None) -> None:
    """Submit -> succeeded latency of `immediate` jobs, one at a time (median of COUNT)."""
    import orjson

    from jobsched.bench.immediate import run_immediate

    result = asyncio.run(run_immediate(url.rstrip("/"), count, kind))
    click.echo(f"immediate {kind} jobs, n={count}: submit -> succeeded")
    click.echo(f"{'clock':<8}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}  (ms)")
    for clock in ("client", "server"):
        s = result[clock]
        click.echo(f"{clock:<8}{s['median_ms']:>10.1f}{s['p90_ms']:>10.1f}"
                   f"{s['min_ms']:>10.1f}{s['max_ms']:>10.1f}")
    if json_out:
        with open(json_out, "wb") as handle:
            handle.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))
