"""``jobsched dead-letters …``: executions whose retries ran out, listed, inspected and
retried (re-driven: one more attempt of the same execution), from a terminal.

Same conventions as ``jobsched jobs`` (jobsched/cli_client.py): ``--url``/``JOBSCHED_URL``,
``--token``/``JOBSCHED_TOKEN``, ``--output table|json`` and the documented exit codes. The
API has one retry per execution (``POST /api/v1/executions/{id}/retry``); retrying many is
that call for each, a few at a time, each answer reported on its own line.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from jobsched.cli_client import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    Conn,
    api_options,
    block,
    call,
    emit_json,
    line,
    print_execution,
    show_time,
    styled_state,
    table,
)
from jobsched.client import ApiError, Client

PAGE = 500
CALLS_IN_FLIGHT = 8
ERROR_WIDTH = 60


async def _every_dead(client: Client, job_id: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.list_dead(job_id=job_id, limit=PAGE, cursor=cursor)
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


async def _job_names(client: Client, job_ids: set[str]) -> dict[str, str]:
    """The name of each job, for people (one GET per distinct job listed, a few at a
    time)."""
    gate = asyncio.Semaphore(CALLS_IN_FLIGHT)

    async def name(job_id: str) -> str:
        async with gate:
            try:
                job = await client.get_job(job_id)
            except ApiError:
                return "-"
        return str(job.get("name") or "-")

    ids = sorted(job_ids)
    names = await asyncio.gather(*(name(i) for i in ids))
    return dict(zip(ids, names, strict=True))


@click.group("dead-letters")
def dead_letters() -> None:
    """Dead executions (their retries ran out): list, show, retry."""


@dead_letters.command("list")
@click.option("--job", "job_id", metavar="JOB_ID", help="Only this job's dead executions.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--all", "every", is_flag=True, help="Follow the cursor through every page.")
@api_options
def dead_letters_list(conn: Conn, job_id: str | None, limit: int, every: bool) -> None:
    """Dead executions, the most recently dead first."""

    async def fetch(client: Client) -> tuple[dict[str, Any], dict[str, str]]:
        if every:
            page: dict[str, Any] = {"items": await _every_dead(client, job_id),
                                    "next_cursor": None}
        else:
            page = dict(await client.list_dead(job_id=job_id, limit=limit))
        names = {} if conn.json else await _job_names(
            client, {e["job_id"] for e in page["items"]})
        return page, names

    page, names = call(conn, fetch)
    if conn.json:
        emit_json(page)
        return
    table(["ID", "JOB", "SCHEDULED FOR", "DIED", "ATTEMPTS", "ERROR"],
          [[e["id"], f"{names.get(e['job_id'], '-')} ({e['job_id'][:8]})",
            show_time(e["scheduled_for"]), show_time(e.get("finished_at")),
            str(e["attempt"]), (e.get("error") or "")[:ERROR_WIDTH]]
           for e in page["items"]])
    if not page["items"]:
        click.echo("no dead executions" + (f" of job {line(job_id)}" if job_id else ""),
                   err=True)
    if page.get("next_cursor"):
        click.echo(f"(more: this shows the newest {limit}; --all lists every one)", err=True)


@dead_letters.command("show")
@click.argument("execution_id")
@api_options
def dead_letters_show(conn: Conn, execution_id: str) -> None:
    """One dead execution: its job, every attempt with its error, and the last attempt's
    output."""

    async def fetch(client: Client) -> tuple[dict[str, Any], dict[str, Any] | None]:
        execution = dict(await client.get_execution(execution_id))
        try:
            job: dict[str, Any] | None = dict(await client.get_job(str(execution["job_id"])))
        except ApiError:
            job = None
        return execution, job

    execution, job = call(conn, fetch, f"execution {execution_id}")
    if conn.json:
        emit_json(execution)
        return
    if job is not None:
        click.echo(f"{'job name:':<11} {line(job['name'])} ({line(job['kind'])}, "
                   f"job {styled_state(job['state'])})")
    print_execution(execution)  # type: ignore[arg-type]
    attempts = execution.get("attempts") or []
    if attempts and attempts[-1].get("output"):
        last = attempts[-1]
        click.echo("")
        click.echo(click.style(f"--- output of attempt {last['attempt']} ---", bold=True))
        output = block(last["output"])
        click.echo(output, nl=not output.endswith("\n"))
    if execution["state"] == "dead":
        click.echo(f"\nretry it: jobsched dead-letters retry {line(execution['id'])}",
                   err=True)


def _retry_exit_code(exc: ApiError) -> int:
    return EXIT_NOT_FOUND if exc.not_found else EXIT_USAGE if exc.invalid else EXIT_ERROR


@dead_letters.command("retry")
@click.argument("execution_ids", nargs=-1, metavar="[EXECUTION_ID]...")
@click.option("--all", "every", is_flag=True,
              help="Every dead execution of the namespace (or of --job).")
@click.option("--job", "job_id", metavar="JOB_ID", help="With --all: only this job's.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation of --all.")
@api_options
def dead_letters_retry(conn: Conn, execution_ids: tuple[str, ...], every: bool,
                       job_id: str | None, yes: bool) -> None:
    """Retry dead executions: each gets one more attempt, now (same execution, attempt + 1).

    \b
      jobsched dead-letters retry 5f0c…  9a1e…
      jobsched dead-letters retry --all --job 3e5d… --yes

    Exit 0 when every one was queued again; otherwise the code of the first that was not
    (3 not found, 1 refused: not dead any more, its job cancelled, a workflow node's)."""
    if every == bool(execution_ids):
        raise click.UsageError("give EXECUTION_IDs or --all (not both)")
    if job_id and not every:
        raise click.UsageError("--job goes with --all")
    ids = list(dict.fromkeys(execution_ids))
    if every:
        found = call(conn, lambda c: _every_dead(c, job_id))
        ids = [e["id"] for e in found]
        scope = f"of job {job_id}" if job_id else "of the namespace"
        if not ids:
            click.echo(f"no dead executions {line(scope)}", err=True)
            if conn.json:
                emit_json([])
            return
        if not yes and not conn.json and sys.stdin.isatty():
            click.confirm(f"retry {len(ids)} dead execution(s) {line(scope)}?", abort=True,
                          err=True)

    async def retry_all(client: Client) -> list[tuple[str, dict[str, Any] | ApiError]]:
        gate = asyncio.Semaphore(CALLS_IN_FLIGHT)

        async def one(execution_id: str) -> tuple[str, dict[str, Any] | ApiError]:
            async with gate:
                try:
                    return execution_id, dict(await client.retry_execution(execution_id))
                except ApiError as exc:
                    return execution_id, exc

        return list(await asyncio.gather(*(one(i) for i in ids)))

    results = call(conn, retry_all)
    code = EXIT_OK
    report = []
    for execution_id, result in results:
        if isinstance(result, ApiError):
            if code == EXIT_OK:
                code = _retry_exit_code(result)
            reason = "not found" if result.not_found else result.one_line()
            report.append({"id": execution_id, "retried": False, "error": reason})
            if not conn.json:
                click.echo(line(f"jobsched: execution {execution_id}: {reason}"), err=True)
            continue
        report.append({"id": execution_id, "retried": True, "execution": result})
        if not conn.json:
            click.echo(f"retried execution {line(result['id'])}: "
                       f"{styled_state(result['state'])}, attempt {line(result['attempt'])}")
    if conn.json:
        emit_json(report)
    elif len(ids) > 1:
        done = sum(1 for r in report if r["retried"])
        click.echo(f"{done} of {len(ids)} retried", err=True)
    if code != EXIT_OK:
        sys.exit(code)


def register(main: click.Group) -> None:
    main.add_command(dead_letters)

