"""The ``jobsched`` command: parses options and hands off; no logic lives here."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
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


@main.group()
def token() -> None:
    """API tokens: create (printed once), list, revoke. Works on the database directly."""


def _token_admin(ctx: click.Context, database_url: str | None, call: Any) -> Any:
    from jobsched.token_admin import TokenAdminError

    settings = _settings(ctx, {"database_url": database_url})
    try:
        return asyncio.run(call(settings.database_url))
    except TokenAdminError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(2)
    except (OSError, ConnectionError) as exc:
        click.echo(f"jobsched: cannot reach PostgreSQL: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - asyncpg errors: one clear line, not a traceback
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(1)


@token.command("create")
@click.option("--namespace", required=True, help="The namespace the token sees and changes.")
@click.option("--role", required=True, type=click.Choice(["admin", "editor", "viewer"]),
              help="admin: everything; editor: no shell jobs; viewer: read only.")
@click.option("--name", help="What the token is for (shown by list).")
@click.option("--expires-in", metavar="DURATION", help="e.g. 12h or 30d; default: never.")
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.pass_context
def token_create(ctx: click.Context, namespace: str, role: str, name: str | None,
                 expires_in: str | None, database_url: str | None) -> None:
    """Create a token and print it on stdout (only this once: it is stored hashed)."""
    from jobsched.token_admin import TokenAdminError, create_token, parse_duration

    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except TokenAdminError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    made, row = _token_admin(
        ctx, database_url, lambda dsn: create_token(dsn, namespace, role, name, lifetime))
    click.echo(made)
    expiry = f", expires {row['expires_at']:%Y-%m-%d %H:%M:%SZ}" if row["expires_at"] else ""
    click.echo(f"token {row['id']} ({role} of namespace {namespace}{expiry}); it is not "
               "stored and cannot be shown again", err=True)


@token.command("list")
@click.option("--namespace", help="Only this namespace's tokens.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.pass_context
def token_list(ctx: click.Context, namespace: str | None, output: str,
               database_url: str | None) -> None:
    """List tokens (never their values)."""
    import orjson

    from jobsched.token_admin import list_tokens

    rows = _token_admin(ctx, database_url, lambda dsn: list_tokens(dsn, namespace))
    if output == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'ID':<37}{'HINT':<10}{'NAMESPACE':<20}{'ROLE':<8}{'STATE':<9}NAME")
    now = datetime.now(UTC)
    for row in rows:
        state = ("revoked" if row["revoked_at"] else
                 "expired" if row["expires_at"] and row["expires_at"] <= now else "active")
        click.echo(f"{row['id']:<37}{row['hint'] + '…':<10}{row['namespace']:<20}"
                   f"{row['role']:<8}{state:<9}{row['name'] or ''}")


@token.command("revoke")
@click.argument("token_id")
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str, database_url: str | None) -> None:
    """Revoke a token by its id: every api refuses it within token_cache_s seconds."""
    from jobsched.token_admin import revoke_token

    row = _token_admin(ctx, database_url, lambda dsn: revoke_token(dsn, token_id))
    click.echo(f"revoked token {row['id']} ({row['role']} of namespace {row['namespace']})")


# The API client commands (jobs, executions, cluster) live in their own module.
from jobsched.cli_client import register as register_client_commands  # noqa: E402

register_client_commands(main)
from jobsched.cli_webhooks import register as register_webhook_commands  # noqa: E402

register_webhook_commands(main)
from jobsched.devcluster import register as register_dev_commands  # noqa: E402

register_dev_commands(main)


@main.group()
def bench() -> None:
    """Benchmark scenarios; each starts the processes it needs on a fresh database, or
    uses a running deployment (see docs/benchmarks.md)."""


@bench.command("immediate")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True,
              help="Base URL of an api process.")
@click.option("--count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--kind", type=click.Choice(["python", "shell"]), default="python",
              show_default=True, help="python needs workers started with "
              "--import jobsched.bench.tasks.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the result here.")
@click.option("--token", envvar="JOBSCHED_TOKEN", help="API token (JOBSCHED_TOKEN).")
def bench_immediate(url: str, count: int, kind: str, json_out: str | None,
                    token: str | None) -> None:
    """Submit -> succeeded latency of `immediate` jobs, one at a time (median of COUNT)."""
    import orjson

    from jobsched.bench.immediate import run_immediate

    result = asyncio.run(run_immediate(url.rstrip("/"), count, kind, token=token))
    click.echo(f"immediate {kind} jobs, n={count}: submit -> succeeded")
    click.echo(f"{'clock':<8}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}  (ms)")
    for clock in ("client", "server"):
        s = result[clock]
        click.echo(f"{clock:<8}{s['median_ms']:>10.1f}{s['p90_ms']:>10.1f}"
                   f"{s['min_ms']:>10.1f}{s['max_ms']:>10.1f}")
    if json_out:
        with open(json_out, "wb") as handle:
            handle.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def _bench_options(function: Any) -> Any:
    """Options every scenario that starts its own deployment shares."""
    options = [
        click.option("--postgres-url", default="postgresql://postgres@127.0.0.1/",
                     show_default=True, help="PostgreSQL server; each run creates and drops "
                     "a database of its own there."),
        click.option("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/",
                     show_default=True),
        click.option("--zookeeper-hosts", default="127.0.0.1:2181", show_default=True),
        click.option("--database-url", help="Database of a RUNNING deployment: load the jobs "
                     "there and start no process (its own scheduler and workers do the work)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="A setting for the started roles, e.g. worker_prefetch=512 "
                     "(passed as JOBSCHED_KEY; repeatable)."),
        click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
                     default="INFO", show_default=True, help="Of the started roles."),
        click.option("--keep", is_flag=True, help="Keep the database (for a post-mortem)."),
        click.option("--task", type=click.Choice(["sync", "async"]), default="sync",
                     show_default=True, help="The no-op task: a plain function (run in the "
                     "worker's thread pool) or a coroutine function (on the worker's loop)."),
        click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 50),
                     help="Runs, each on a fresh deployment; the tables show medians."),
        click.option("--json-out", type=click.Path(dir_okay=False),
                     help="Also write every run and the medians here."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _bench_setup(params: dict[str, Any]) -> tuple[Any, Any]:
    from jobsched.bench.cluster import Services
    from jobsched.bench.common import Options

    services = Services(params.pop("postgres_url"), params.pop("amqp_url"),
                        params.pop("zookeeper_hosts"))
    settings = []
    for item in params.pop("overrides"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        settings.append((f"JOBSCHED_{key.upper()}", value))
    options = Options(log_level=params.pop("log_level"), keep=params.pop("keep"),
                      settings=tuple(settings), database_url=params.pop("database_url"),
                      task=params.pop("task"))
    return services, options


@bench.command("throughput")
@click.option("--mode", type=click.Choice(["burn-down", "steady", "both"]), default="both",
              show_default=True)
@click.option("--jobs", default=20_000, show_default=True, type=click.IntRange(1),
              help="burn-down: jobs loaded at once.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes.")
@click.option("--rates", default="250,500,1000,2000,4000", show_default=True,
              help="steady: offered jobs/s, one step each, until one cannot be kept up.")
@click.option("--step-seconds", "step_s", default=10.0, show_default=True,
              type=click.FloatRange(0.5))
@click.option("--vs", type=click.Choice(["celery"]),
              help="Also run the burn-down with Celery (needs the 'bench' extra), without "
              "and with a PostgreSQL result backend, and report the ratios.")
@_bench_options
def bench_throughput(**params: Any) -> None:
    """No-op python jobs end to end: burn-down and steady offered load.

    burn-down: a scheduler and WORKERS workers ready, JOBS immediate jobs COPYed into
    PostgreSQL in one transaction (a NOTIFY wakes the scheduler); executions/s until the
    last one finished. steady: RATES jobs/s offered for STEP-SECONDS each. Reports
    submit -> started/finished percentiles and CPU seconds per process. --vs celery runs
    each burn-down again with Celery on the same RabbitMQ, in the same run.
    """
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    try:
        rates = [int(r) for r in params.pop("rates").split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers",
                                 param_hint="--rates") from None
    commands.throughput(services, options, rates=rates, echo=click.echo, **params)


@bench.command("lateness")
@click.option("--jobs", default=1000, show_default=True, type=click.IntRange(1),
              help="Cron jobs firing every second.")
@click.option("--seconds", default=30, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_lateness(**params: Any) -> None:
    """Fire lateness (due -> published, due -> started) of JOBS every-second cron jobs over
    SECONDS seconds; missed and duplicate fires from the executions table."""
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    commands.lateness(services, options, echo=click.echo, **params)


@bench.command("herd")
@click.option("--jobs", default=10_000, show_default=True, type=click.IntRange(1),
              help="One-shot jobs due in the same second.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--vs", type=click.Choice(["celery"]),
              help="Also fire the same herd with Celery beat (needs the 'bench' extra): "
              "JOBS crontab() entries due at the next minute boundary; ratios.")
@_bench_options
def bench_herd(**params: Any) -> None:
    """JOBS jobs due in the same second: time until all started, lateness spread.

    --vs celery then runs one celery beat with JOBS entries on crontab() (every minute) and
    a prefork Celery worker on the same RabbitMQ, waits for the first minute boundary after
    beat started (up to ~75 s) and reports both sides and the ratios celery ÷ jobsched.
    """
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    commands.herd(services, options, echo=click.echo, **params)


@bench.command("api")
@click.option("--url", help="Base URL of a RUNNING api process (else one is started).")
@click.option("--token", help="Bearer token for --url (also JOBSCHED_TOKEN).")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(0.5),
              help="Length of each phase (POST, then GET).")
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Client processes sharing the concurrency.")
@_bench_options
def bench_api(**params: Any) -> None:
    """Job submits/s and GET p50/p99 through one api process at CONCURRENCY."""
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    commands.api(services, options, echo=click.echo, **params)


@bench.command("scale")
@click.option("--schedules", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="Active schedules COPYed before the runs.")
@click.option("--jobs", default=1000, show_default=True, type=click.IntRange(1),
              help="lateness: every-second cron jobs.")
@click.option("--seconds", default=20, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--api-seconds", default=10.0, show_default=True, type=click.FloatRange(0.5))
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 16))
@_bench_options
def bench_scale(**params: Any) -> None:
    """lateness and api on an empty database and with SCHEDULES active schedules stored."""
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    commands.scale(services, options, echo=click.echo, **params)


@bench.command("webhooks")
@click.option("--rate", default=200, show_default=True, type=click.IntRange(1),
              help="latency: immediate jobs/s offered, each delivered to the endpoint.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(1))
@click.option("--events", default=5000, show_default=True, type=click.IntRange(1),
              help="deliveries/s: events recorded at once.")
@click.option("--jobs", default=20_000, show_default=True, type=click.IntRange(0),
              help="burn-down without and with an endpoint (0: skip).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_webhooks(**params: Any) -> None:
    """Webhooks: commit -> delivery latency, deliveries/s, and burn-down throughput with one
    subscribed endpoint as a ratio of burn-down without (docs/webhooks.md)."""
    from jobsched.bench import commands

    services, options = _bench_setup(params)
    commands.webhooks(services, options, echo=click.echo, **params)
