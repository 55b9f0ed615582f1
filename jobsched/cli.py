"""The ``jobsched`` command: parses options and hands off; no logic lives here."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
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
@click.option("--status", is_flag=True,
              help="Change nothing: list applied and pending migrations; exit 1 if any is "
              "pending, 3 if the database is newer than this jobsched.")
@click.pass_context
def migrate(ctx: click.Context, database_url: str | None, create_db: bool, status: bool) -> None:
    """Apply pending schema migrations (idempotent, under an advisory lock)."""
    from jobsched.adapters import postgres

    settings = _settings(ctx, {"database_url": database_url})
    if status:
        from jobsched.cli_operations import migrate_status

        if create_db:
            raise click.UsageError("--status changes nothing: not with --create-db")

        sys.exit(migrate_status(settings))

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
    _warn_about_unknown_environment()
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            logging.getLogger("jobsched").info(
                "event loop: %s", type(runner.get_loop()).__module__.split(".")[0])
            code = runner.run(serve(settings, hosted, migrate=run_migrate))
    except ImportError as exc:
        click.echo(f"jobsched: cannot import task module: {exc}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a role runs on (``event_loop``): uvloop's unless told otherwise or
    not installed; None is asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop=uvloop, but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _warn_about_unknown_environment() -> None:
    import logging
    import os

    from jobsched.settings import unknown_environment

    for warning in unknown_environment(os.environ):
        logging.getLogger("jobsched").warning("%s", warning)


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
@click.option("--expires-in", metavar="DURATION",
              help="e.g. 3600, 12h, 30d or 1h30m; default: never.")
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.pass_context
def token_create(ctx: click.Context, namespace: str, role: str, name: str | None,
                 expires_in: str | None, database_url: str | None) -> None:
    """Create a token and print it on stdout (only this once: it is stored hashed)."""
    from jobsched.token_admin import TokenAdminError, create_token, parse_lifetime

    try:
        lifetime = parse_lifetime(expires_in) if expires_in else None
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


@main.group("secrets")
def secrets_group() -> None:
    """The key that seals the secrets store (JOBSCHED_SECRETS_KEY)."""


@secrets_group.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for JOBSCHED_SECRETS_KEY (Fernet: 32 random bytes, base64)."""
    from jobsched.crypto import new_key

    click.echo(new_key())


@secrets_group.command("rotate-key")
@click.option("--database-url", help="PostgreSQL URL (JOBSCHED_DATABASE_URL).")
@click.pass_context
def secrets_rotate_key(ctx: click.Context, database_url: str | None) -> None:
    """Reseal every stored secret under the first key of JOBSCHED_SECRETS_KEY.

    Put the new key first and keep the old ones after it (on every api and worker too),
    run this, then remove the old keys. Exit status 1 if a value could not be opened
    with any configured key."""
    from jobsched.crypto import SecretsKeyError
    from jobsched.secrets_admin import rotate_key

    settings = _settings(ctx, {"database_url": database_url})
    try:
        report = asyncio.run(rotate_key(settings.database_url, settings.secrets_key))
    except SecretsKeyError as exc:
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(2)
    except (OSError, ConnectionError) as exc:
        click.echo(f"jobsched: cannot reach PostgreSQL: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - asyncpg errors: one clear line, not a traceback
        click.echo(f"jobsched: {exc}", err=True)
        sys.exit(1)
    click.echo(f"resealed {report.resealed} secret(s) under the first key"
               + (f"; {report.changed_meanwhile} replaced meanwhile (already under it)"
                  if report.changed_meanwhile else ""))
    if report.unreadable:
        click.echo(f"jobsched: {report.unreadable} secret(s) are sealed with a key that is "
                   "not in JOBSCHED_SECRETS_KEY: left as they are", err=True)
        sys.exit(1)


# The API client commands (jobs, executions, cluster) live in their own module.
from jobsched.cli_client import register as register_client_commands  # noqa: E402

register_client_commands(main)
from jobsched.cli_webhooks import register as register_webhook_commands  # noqa: E402

register_webhook_commands(main)
from jobsched.cli_dead_letters import register as register_dead_letter_commands  # noqa: E402

register_dead_letter_commands(main)
from jobsched.cli_operations import register as register_operations_commands  # noqa: E402

register_operations_commands(main)


NEEDS_CHECKOUT = "need a source checkout installed with pip install -e '.[dev]'"


def source_checkout(package_dir: Path) -> Path | None:
    """The checkout an editable install runs from: the parent of the ``jobsched`` package
    directory, if ``jobsched_dev`` sits beside it (never so for an installed wheel)."""
    root = package_dir.parent
    return root if (root / "jobsched_dev" / "__init__.py").is_file() else None


def _needs_checkout(name: str) -> click.Command:
    @click.command(name, hidden=True, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command() -> None:
        click.echo(f"jobsched: the {name} commands {NEEDS_CHECKOUT}", err=True)
        sys.exit(2)

    return command


def register_dev_commands(main: click.Group) -> None:
    """``jobsched bench`` and ``jobsched dev`` come from ``jobsched_dev``, development tools
    beside this package in a source checkout and never installed with it. An editable
    install puts only ``jobsched`` on the import path, so the checkout root is added (last,
    so nothing installed is shadowed) before importing them."""
    root = source_checkout(Path(__file__).resolve().parent)
    if root is not None and str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        from jobsched_dev.cli import register
    except ModuleNotFoundError as exc:
        if exc.name not in ("jobsched_dev", "jobsched_dev.cli"):
            raise  # a checkout whose tools are broken: say so, do not hide the commands
        for name in ("bench", "dev"):
            main.add_command(_needs_checkout(name))
        return
    register(main)


register_dev_commands(main)
