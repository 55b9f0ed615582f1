"""``jobsched jobs|executions|cluster``: the HTTP API from a terminal or a script.

Every command talks to one api process (``--url`` / ``JOBSCHED_URL``, with ``--token`` /
``JOBSCHED_TOKEN``) through ``jobsched.Client``. Output is a table for people, or the API's
JSON with ``--output json``. Exit codes are part of the interface (docs/cli.md): 0 ok,
1 API or other error, 2 usage or validation error, 3 not found, 4 connection failed,
5 a watched execution did not succeed.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import orjson

from jobsched.client import (
    DEFAULT_URL,
    ApiError,
    Client,
    ConnectionFailed,
    Execution,
    FireTime,
    Job,
    check_base_url,
    check_token,
)
from jobsched.domain.explain import why_not

EXIT_OK = 0
EXIT_ERROR = 1  # the API refused (409, 5xx, ...) or something else went wrong
EXIT_USAGE = 2  # bad command line, or the API rejected the input as invalid (400/422)
EXIT_NOT_FOUND = 3  # the job or execution does not exist (404)
EXIT_CONNECTION = 4  # the API could not be reached (refused, DNS, timeout)
EXIT_RUN_FAILED = 5  # --watch: the execution ended in a state other than succeeded
EXIT_INTERRUPTED = 130

T = TypeVar("T")
STATE_COLOURS = {
    "active": "green", "paused": "yellow", "completed": "blue", "cancelled": "bright_black",
    "succeeded": "green", "running": "cyan", "queued": "bright_black", "retrying": "yellow",
    "failed": "red", "timed_out": "red", "dead": "red", "skipped": "bright_black",
    "missed": "magenta", "pending": "bright_black", "upstream_failed": "red",
}


@dataclass(frozen=True, slots=True)
class Conn:
    url: str
    token: str | None
    output: str

    @property
    def json(self) -> bool:
        return self.output == "json"


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--token`` and ``--output`` on every command, folded into ``conn``."""

    @click.option("--url", envvar="JOBSCHED_URL", default=DEFAULT_URL, show_default=True,
                  help="Base URL of a jobsched api process (JOBSCHED_URL).")
    @click.option("--token", envvar="JOBSCHED_TOKEN", help="API token (JOBSCHED_TOKEN).")
    @click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                  show_default=True, help="Human-readable table, or the API's JSON.")
    @functools.wraps(command)
    def wrapper(url: str, token: str | None, output: str, **kwargs: Any) -> Any:
        return command(checked_conn(url, token, output), **kwargs)

    return wrapper


def checked_conn(url: str, token: str | None, output: str) -> Conn:
    """The connection options, checked before anything is sent: a URL or a token that
    cannot work is a usage error (exit 2) in one line with the fix, not a traceback."""
    try:
        url = check_base_url(url)
    except ValueError as exc:
        fail(f"--url (JOBSCHED_URL): {exc}", EXIT_USAGE)
    try:
        check_token(token)
    except ValueError as exc:
        fail(f"--token (JOBSCHED_TOKEN): {exc}", EXIT_USAGE)
    return Conn(url, token or None, output)


class NotAnApiRoot(Exception):
    """Every route answers 404 under this URL: it is not the root of a jobsched api."""


async def _is_api_root(client: Client) -> bool:
    """Whether the client's URL is an api's root: its OpenAPI document is found under it.
    Asked only after a 404, so a missing job is told apart from a wrong ``--url`` (an
    ``…/api/v1`` suffix answers 404 on every route)."""
    try:
        await client.request("GET", "/api/v1/openapi.json")
    except ApiError as exc:
        return not exc.not_found
    except (ConnectionFailed, TimeoutError):
        return True  # no evidence either way: report the first answer as it was
    return True


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"jobsched: {line(message)}", err=True)
    sys.exit(code)


def call(conn: Conn, action: Callable[[Client], Awaitable[T]], what: str = "") -> T:
    """Run one async action with a client; API and connection errors become one line on
    stderr and the documented exit code."""

    async def run() -> T:
        async with Client(conn.url, conn.token) as client:
            try:
                return await action(client)
            except ApiError as exc:
                if exc.not_found and not await _is_api_root(client):
                    raise NotAnApiRoot from exc
                raise

    try:
        return asyncio.run(run())
    except NotAnApiRoot:
        root = urlunsplit(urlsplit(conn.url)._replace(path="", query="", fragment=""))
        fail(f"{conn.url} answers 404 to every API route: --url (JOBSCHED_URL) is the api "
             f"server's root, e.g. {root}, not a path under it", EXIT_USAGE)
    except ApiError as exc:
        if exc.not_found and what:
            fail(f"{what} not found", EXIT_NOT_FOUND)
        code = EXIT_NOT_FOUND if exc.not_found else EXIT_USAGE if exc.invalid else EXIT_ERROR
        fail(exc.one_line(), code)
    except ConnectionFailed as exc:
        fail(str(exc), EXIT_CONNECTION)
    except TimeoutError as exc:
        fail(str(exc) or "timed out", EXIT_ERROR)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


# output: whatever came from the server (names, output, errors) is made inert first, so
# a job cannot write to the terminal of whoever reads it: terminal escape sequences are
# dropped; other control characters, and the bidirectional formatting characters that
# make text display in another order than it is, show as U+FFFD.

_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI: colours, cursor moves, erase, ...
    r"|\x1b[]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC ... to ST
    r"|\x1b[ -/]*[0-~]?"  # the other ESC sequences
    r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
    r"|[\x90\x98\x9d-\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # 8-bit OSC ... to ST
)
_UNSAFE_IN_BLOCK = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_UNSAFE_IN_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
REPLACEMENT = "\ufffd"


def block(text: str) -> str:
    """Text of many lines (an execution's output) made safe to print: line breaks and
    tabs stay, a carriage return that is not part of CRLF becomes a line break (it could
    otherwise overwrite what was printed)."""
    text = _ESCAPE_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE_IN_BLOCK.sub(REPLACEMENT, text)


def line(value: object) -> str:
    """A value from the server made safe to print on one line (a table cell, a name, an
    error): as ``block``, and line breaks and tabs become spaces."""
    text = _ESCAPE_SEQUENCE.sub("", str(value))
    return _UNSAFE_IN_LINE.sub(lambda m: " " if m.group() in "\t\n\r" else REPLACEMENT,
                               text)


def _escape_json(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_text(data: Any, option: int = 0) -> str:
    """JSON whose strings spell C1 controls and bidirectional formatting characters as
    \\u escapes (orjson escapes only C0): the same value, inert on a terminal."""
    return _JSON_UNSAFE.sub(_escape_json, orjson.dumps(data, option=option).decode())


def emit_json(data: Any) -> None:
    click.echo(json_text(data, orjson.OPT_INDENT_2))


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def relative(moment: datetime, now: datetime | None = None) -> str:
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    size = abs(seconds)
    if size < 1:
        return "now"
    for unit, span in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if size >= span:
            amount = f"{int(size // span)}{unit}"
            break
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def show_time(value: str | None, *, rel: bool = False) -> str:
    moment = parse_time(value)
    if moment is None:
        return "-"
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{text} ({relative(moment)})" if rel else text


def duration(execution: Execution | dict[str, Any]) -> str:
    started = parse_time(execution.get("started_at"))
    finished = parse_time(execution.get("finished_at"))
    if started is None:
        return "-"
    seconds = ((finished or datetime.now(UTC)) - started).total_seconds()
    text = f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
    return text if finished else f"{text}…"


def styled_state(state: str | None, width: int = 0) -> str:
    text = line(state or "-").ljust(width)
    return click.style(text, fg=STATE_COLOURS.get(state or "")) if state else text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]],
          state_column: int | None = None) -> None:
    """Columns padded to their widest cell; the state column coloured on a terminal."""
    rows = [[line(cell) for cell in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        if state_column is not None:
            cells[state_column] = styled_state(row[state_column] or None,
                                               widths[state_column])
        click.echo("  ".join(cells).rstrip())


def payload_summary(job: Job | dict[str, Any]) -> str:
    kind = job.get("kind")
    spec: dict[str, Any] = dict(job).get(kind or "") or {}
    if kind == "shell":
        return " ".join(spec.get("argv", []))
    if kind == "http":
        return f"{spec.get('method', 'GET')} {spec.get('url', '')}"
    if kind == "python":
        args = spec.get("args") or {}
        return f"{spec.get('function', '')}({orjson.dumps(args).decode() if args else ''})"
    return "-"


def schedule_text(job: Job | dict[str, Any]) -> str:
    tz = job.get("timezone") or "UTC"
    return job.get("schedule", "-") + ("" if tz == "UTC" else f" ({tz})")


def last_outcome(job: Job | dict[str, Any]) -> str:
    last = job.get("last_execution")
    return last["state"] if last else "-"


def print_job(job: Job) -> None:
    last = job.get("last_execution")
    retry = job.get("retry") or {}
    fields = [
        ("id", line(job["id"])),
        ("name", line(job.get("name", "-"))),
        ("state", styled_state(job.get("state"))),
        ("kind", line(job.get("kind", "-"))),
        ("runs", line(payload_summary(job))),
        ("schedule", line(schedule_text(job))),
        ("next fire", show_time(job.get("next_fire_at"), rel=True)),
        ("priority", line(job.get("priority", "normal"))),
        ("timeout", line(f"{job.get('timeout_s', '-')}s")),
        ("retry", line(f"{retry.get('max_attempts', 1)} attempt(s), backoff "
                       f"{retry.get('backoff_s', '-')}s up to "
                       f"{retry.get('max_backoff_s', '-')}s")),
        ("labels", line(", ".join(f"{k}={v}" for k, v in (job.get("labels") or {}).items())
                        or "-")),
        ("created", show_time(job.get("created_at"))),
        ("updated", show_time(job.get("updated_at"))),
    ]
    if last:
        fields.append(("last run", f"{styled_state(last['state'])} "
                                   f"{show_time(last['scheduled_for'])} "
                                   f"({duration(last)}) {line(last['id'])}"))
    for key, value in fields:
        click.echo(f"{key + ':':<11} {value}")


def print_preview(schedule: str, timezone: str, items: list[FireTime]) -> None:
    click.echo(f"schedule {line(repr(schedule))} ({line(timezone)}), next fires:")
    if not items:
        click.echo("  none: it never fires again")
    for item in items:
        moment = parse_time(item["utc"])
        wall = parse_time(item["local"])
        assert moment is not None and wall is not None
        if timezone == "UTC":
            click.echo(f"  {show_time(item['utc'])}  ({relative(moment)})")
        else:  # the schedule's own wall clock first: that is what the cron fields mean
            click.echo(f"  {wall:%Y-%m-%d %H:%M:%S} {wall.isoformat()[-6:]}  "
                       f"({show_time(item['utc'])}, {relative(moment)})")


def print_execution(execution: Execution) -> None:
    fields = [
        ("id", line(execution["id"])),
        ("job", line(execution["job_id"])),
        ("state", styled_state(execution["state"])
         + (f" ({line(execution['reason'])})" if execution.get("reason") else "")),
        ("scheduled", show_time(execution["scheduled_for"])),
        ("attempt", line(execution["attempt"])),
        ("priority", line(execution.get("priority", "normal"))),
        ("worker", line(execution.get("worker") or "-")),
        ("queued", show_time(execution.get("queued_at"))),
        ("started", show_time(execution.get("started_at"))),
        ("finished", show_time(execution.get("finished_at"))),
        ("duration", duration(execution)),
    ]
    if execution.get("exit_code") is not None:
        fields.append(("exit code", line(execution["exit_code"])))
    if execution.get("error"):
        fields.append(("error", line(execution["error"])))
    for key, value in fields:
        click.echo(f"{key + ':':<11} {value}")
    attempts = execution.get("attempts") or []
    if attempts:
        click.echo("")
        table(["ATTEMPT", "OUTCOME", "WORKER", "STARTED", "DURATION", "EXIT", "ERROR"],
              [[str(a["attempt"]), a.get("outcome") or "running", a.get("worker") or "-",
                show_time(a.get("started_at")), duration(a),  # type: ignore[arg-type]
                "-" if a.get("exit_code") is None else str(a["exit_code"]),
                (a.get("error") or "")[:60]] for a in attempts], state_column=1)


def json_or_text(text: str) -> Any:
    """A JSON value, or else the text itself: ``--arg n=3`` is 3, ``--arg name=ada``
    is "ada"."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def key_values(pairs: Sequence[str], option: str, *, json_values: bool = False,
               sep: str = "=") -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, found, value = pair.partition(sep)
        if sep == ":":  # HTTP headers: "Name: value"
            key, value = key.strip(), value.strip()
        if not found or not key:
            raise click.BadParameter(f"expected KEY{sep}VALUE, got {pair!r}",
                                     param_hint=option)
        result[key] = json_or_text(value) if json_values else value
    return result


def read_json_file(path: str, option: str) -> dict[str, Any]:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        data = orjson.loads(raw)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                 param_hint=option) from None
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"{path} is not JSON: {exc}", param_hint=option) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a JSON object", param_hint=option)
    return data


# jobs


@click.group()
def jobs() -> None:
    """Create, inspect and control jobs."""


@jobs.command("create")
@click.option("--name", help="Job name (required unless --file gives one).")
@click.option("--schedule", "-s", help="'immediate', an RFC 3339 time, a cron expression "
              "(5 fields, or 6 with seconds first), '@daily' or '@every 30s'.")
@click.option("--timezone", "-z", help="Time zone of a cron schedule [default: UTC].")
@click.option("--python", "function", metavar="MODULE:FUNCTION",
              help="Run this @task function on a worker (kind python).")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument of --python (VALUE is JSON, or else a string).")
@click.option("--http", "http_url", metavar="URL", help="Call this URL (kind http).")
@click.option("--method", type=click.Choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
              help="HTTP method of --http [default: GET].")
@click.option("--header", "headers", multiple=True, metavar="NAME:VALUE",
              help="HTTP header of --http (repeatable).")
@click.option("--body", help="Request body of --http.")
@click.option("--env", "envs", multiple=True, metavar="NAME=VALUE",
              help="Environment variable of a shell job (repeatable).")
@click.option("--cwd", help="Working directory of a shell job.")
@click.option("--timeout", "timeout_s", type=float, help="Seconds before an attempt is killed.")
@click.option("--max-attempts", "max_attempts", type=click.IntRange(1),
              help="Attempts in all, the first included (1 = no retry) [default: 1].")
@click.option("--retries", "retries_alias", type=click.IntRange(1), hidden=True,
              help="The old name of --max-attempts (it counts attempts, not retries).")
@click.option("--backoff", "backoff_s", type=float, help="First retry delay in seconds.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]),
              help="Priority band: high starts first, low never starves [default: normal].")
@click.option("--concurrency", type=click.Choice(["allow", "forbid", "replace"]),
              help="A fire while the previous run still runs: both run, this one is "
              "skipped, or it replaces the running one [default: allow].")
@click.option("--misfire", type=click.Choice(["run_once", "run_all", "skip"]),
              help="Fires found late (an outage, a leader change): run one, run each (up "
              "to a cap), or skip them [default: run_once].")
@click.option("--idempotency-key", metavar="KEY",
              help="Retrying with the same key and job within 24 h returns the first job "
              "instead of creating another (Idempotency-Key header).")
@click.option("--file", "-f", "file", metavar="PATH",
              help="Job body as JSON ('-' for stdin); the flags above override its fields.")
@click.option("--dry-run", is_flag=True, help="Validate and preview only; create nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@api_options
def jobs_create(conn: Conn, argv: tuple[str, ...], name: str | None, schedule: str | None,
                timezone: str | None, function: str | None, args: tuple[str, ...],
                http_url: str | None, method: str | None, headers: tuple[str, ...],
                body: str | None, envs: tuple[str, ...], cwd: str | None,
                timeout_s: float | None, max_attempts: int | None,
                retries_alias: int | None, backoff_s: float | None,
                labels: tuple[str, ...], priority: str | None, concurrency: str | None,
                misfire: str | None, idempotency_key: str | None, file: str | None,
                dry_run: bool, yes: bool) -> None:
    """Create a job; a shell job's command follows `--`.

    \b
      jobsched jobs create --name hello -s '*/5 * * * *' -- /bin/echo hi
      jobsched jobs create --name report -s '0 9 * * *' -z Europe/Berlin \\
          --python myapp.tasks:send_report --arg team=billing
      jobsched jobs create -f job.json

    The next fire times are shown first (and, on a terminal, confirmed).
    """
    job: dict[str, Any] = read_json_file(file, "--file") if file else {}
    max_attempts = _max_attempts(max_attempts, retries_alias)
    kinds = [k for k, given in (("shell", argv), ("python", function), ("http", http_url))
             if given]
    if len(kinds) > 1:
        raise click.UsageError("give one of: a command after --, --python, --http")
    if kinds:
        for other in ("shell", "python", "http"):
            job.pop(other, None)
        job["kind"] = kinds[0]
    if argv:
        job["shell"] = {"argv": list(argv)}
        if envs:
            job["shell"]["env"] = key_values(envs, "--env")
        if cwd:
            job["shell"]["cwd"] = cwd
    elif envs or cwd:
        raise click.UsageError("--env and --cwd belong to a shell job (command after --)")
    if function:
        job["python"] = {"function": function, "args": key_values(args, "--arg",
                                                                  json_values=True)}
    elif args:
        raise click.UsageError("--arg belongs to --python")
    if http_url:
        spec: dict[str, Any] = {"url": http_url, "method": method or "GET"}
        if headers:
            spec["headers"] = key_values(headers, "--header", sep=":")
        if body is not None:
            spec["body"] = body
        job["http"] = spec
    elif method or headers or body is not None:
        raise click.UsageError("--method, --header and --body belong to --http")
    for key, value in (("name", name), ("schedule", schedule), ("timezone", timezone),
                       ("timeout_s", timeout_s), ("priority", priority),
                       ("concurrency", concurrency), ("misfire", misfire)):
        if value is not None:
            job[key] = value
    if max_attempts is not None or backoff_s is not None:
        job["retry"] = dict(job.get("retry") or {})
        if max_attempts is not None:
            job["retry"]["max_attempts"] = max_attempts
        if backoff_s is not None:
            job["retry"]["backoff_s"] = backoff_s
    if labels:
        job["labels"] = {**(job.get("labels") or {}), **key_values(labels, "--label")}
    for required in ("name", "schedule", "kind"):
        if required not in job:
            hint = "a command after --, --python or --http" if required == "kind" \
                else f"--{required}"
            raise click.UsageError(f"missing {required}: give {hint} (or --file)")

    preview = _preview(conn, str(job["schedule"]), str(job.get("timezone") or "UTC"))
    if dry_run:
        if conn.json:
            emit_json({"job": job, "preview": preview})
        return
    if sys.stdin.isatty() and not yes and not conn.json and not file == "-":
        click.confirm("create this job?", default=True, abort=True)
    created = call(conn, lambda c: c.create_job(job, idempotency_key=idempotency_key))
    if conn.json:
        emit_json(created)
        return
    click.echo(f"created job {line(created['id'])} ({line(created.get('name'))}), "
               f"next fire {show_time(created.get('next_fire_at'), rel=True)}")


def _max_attempts(max_attempts: int | None, retries_alias: int | None) -> int | None:
    """``--max-attempts``, or its old name ``--retries`` (hidden; same meaning)."""
    if max_attempts is not None and retries_alias is not None \
            and max_attempts != retries_alias:
        raise click.UsageError("--retries is the old name of --max-attempts: give one")
    return max_attempts if max_attempts is not None else retries_alias


def _preview(conn: Conn, schedule: str, timezone: str) -> list[FireTime] | None:
    """Show the next fire times (not with --output json, whose stdout is the job alone);
    an invalid schedule stops here with exit 2, before anything is created."""

    async def fetch(client: Client) -> list[FireTime] | None:
        try:
            return await client.preview_schedule(schedule, timezone, count=5)
        except ApiError as exc:
            if exc.status in (404, 405) and not exc.errors:  # an api without the endpoint
                return None
            if [e.get("field") for e in exc.errors] == ["job_id"]:
                hashed.append(True)  # valid, but its H values come from the new job's id
                return None
            raise

    hashed: list[bool] = []
    items = call(conn, fetch)
    if conn.json:
        return items
    if hashed:
        click.echo(f"schedule {schedule!r} has hashed values (H): its fire times depend on "
                   "the job's id, shown once it is created", err=True)
    elif items is None:
        click.echo("(this api offers no schedule preview)", err=True)
    else:
        print_preview(schedule, timezone, items)
    return items


@jobs.command("list")
@click.option("--state", type=click.Choice(["active", "paused", "completed", "cancelled"]))
@click.option("--name", help="Only jobs with exactly this name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only jobs with this label (repeatable: all must match).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--all", "every", is_flag=True, help="Follow the cursor through every page.")
@api_options
def jobs_list(conn: Conn, state: str | None, name: str | None, labels: tuple[str, ...],
              limit: int, every: bool) -> None:
    """List jobs, newest first."""
    label_map = key_values(labels, "--label")

    async def fetch(client: Client) -> tuple[list[Job], str | None]:
        if every:
            found = [j async for j in client.iter_jobs(state=state, name=name,
                                                       labels=label_map, page_size=limit)]
            return found, None
        page = await client.list_jobs(state=state, name=name, labels=label_map, limit=limit)
        return page["items"], page["next_cursor"]

    items, cursor = call(conn, fetch)
    if conn.json:
        emit_json({"items": items, "next_cursor": cursor})
        return
    table(["ID", "NAME", "STATE", "SCHEDULE", "NEXT FIRE", "LAST"],
          [[j["id"], j.get("name", "-"), j["state"], schedule_text(j),
            show_time(j.get("next_fire_at"), rel=True), last_outcome(j)] for j in items],
          state_column=2)
    if cursor:
        click.echo(f"(more: --limit {limit} shows one page; --all shows every page)", err=True)


@jobs.command("get")
@click.argument("job_id")
@api_options
def jobs_get(conn: Conn, job_id: str) -> None:
    """Show one job, its next fire and its last execution."""
    job = call(conn, lambda c: c.get_job(job_id), f"job {job_id}")
    emit_json(job) if conn.json else print_job(job)


@jobs.command("explain")
@click.argument("job_id")
@api_options
def jobs_explain(conn: Conn, job_id: str) -> None:
    """Why a job did or did not run: its next fire and why, recent runs missed, skipped,
    coalesced or dead with their reasons, live workers and its queue's depth."""
    report = call(conn, lambda c: c.explain_job(job_id), f"job {job_id}")
    emit_json(report) if conn.json else print_explain(report)


def print_explain(report: dict[str, Any]) -> None:
    fire = report["next_fire"]
    workers = report["workers"]
    queue = report["queue"]
    alive = ("unknown (" + str(workers.get("error")) + ")" if workers["alive"] is None
             else f"{workers['alive']}" + (f" ({', '.join(workers['instances'])})"
                                           if workers["instances"] else ""))
    depth = ("unknown (" + str(queue.get("error")) + ")" if queue["depth"] is None
             else str(queue["depth"]))
    runs = str(report["run_count"]) + (f" of max {report['max_runs']}"
                                       if report.get("max_runs") is not None else "")
    pairs = [
        ("summary", report["summary"]),
        ("state", report["state"]),
        ("next fire", show_time(fire.get("at"), rel=True) if fire.get("at") else "none"),
        ("why", f"{fire['reason']}: {fire['detail']}"),
        ("runs", runs),
        ("workers", alive),
        (f"queue ({queue['priority']})", depth),
    ]
    if report.get("paused_since"):
        pairs.insert(3, ("paused since", show_time(report["paused_since"], rel=True)))
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        text = styled_state(value) if key == "state" else line(value)
        click.echo(f"{key + ':':<{width + 1}} {text}")
    recent = report.get("recent") or []
    if not recent:
        click.echo("recent:  no missed, skipped, coalesced or dead runs")
        return
    click.echo("recent runs not as planned (newest first):")
    table(["  SCHEDULED FOR", "STATE", "REASON"],
          [["  " + show_time(e["scheduled_for"]), e["state"],
            why_not(e) or "-"] for e in recent], state_column=1)


@jobs.command("update")
@click.argument("job_id")
@click.option("--name")
@click.option("--schedule", "-s")
@click.option("--timezone", "-z")
@click.option("--timeout", "timeout_s", type=float)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Set a label (repeatable); --set 'labels={\"k\": null}' removes one.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]),
              help="Priority band of later fires (runs already queued keep theirs).")
@click.option("--set", "sets", multiple=True, metavar="FIELD=JSON",
              help="Any other field, as JSON: --set 'retry={\"max_attempts\": 3}'.")
@click.option("--file", "-f", "file", metavar="PATH",
              help="The changes as a JSON object ('-' for stdin).")
@api_options
def jobs_update(conn: Conn, job_id: str, name: str | None, schedule: str | None,
                timezone: str | None, timeout_s: float | None, labels: tuple[str, ...],
                priority: str | None, sets: tuple[str, ...], file: str | None) -> None:
    """Change a job's schedule, payload or policies: only the fields given, sent as a JSON
    merge patch (objects merge, null removes a key)."""
    changes = read_json_file(file, "--file") if file else {}
    changes.update(key_values(sets, "--set", json_values=True))
    for key, value in (("name", name), ("schedule", schedule), ("timezone", timezone),
                       ("timeout_s", timeout_s), ("priority", priority)):
        if value is not None:
            changes[key] = value
    if labels:
        changes["labels"] = key_values(labels, "--label")
    if not changes:
        raise click.UsageError("nothing to change: give --schedule, --set, --file, ...")
    job = call(conn, lambda c: c.update_job(job_id, changes), f"job {job_id}")
    if conn.json:
        emit_json(job)
        return
    click.echo(f"updated job {line(job['id'])}")
    print_job(job)


def _job_action(verb: str, past: str, method: str, doc: str) -> click.Command:
    @jobs.command(verb, help=doc)
    @click.argument("job_id")
    @api_options
    def command(conn: Conn, job_id: str) -> None:
        job = call(conn, lambda c: getattr(c, method)(job_id), f"job {job_id}")
        if conn.json:
            emit_json(job)
        else:
            fire = (f", next fire {show_time(job.get('next_fire_at'), rel=True)}"
                    if job["state"] == "active" else "")
            click.echo(f"job {line(job['id'])} {past}: {styled_state(job['state'])}{fire}")

    return command


jobs_cancel = _job_action(
    "cancel", "cancelled", "cancel_job",
    "Cancel a job: no further fires; queued runs are cancelled, running ones stopped. "
    "Cancelling a cancelled job again is not an error.")
jobs_pause = _job_action("pause", "paused", "pause_job",
                         "Pause a job: it does not fire until resumed.")
jobs_resume = _job_action("resume", "resumed", "resume_job",
                          "Resume a paused job from its next fire time.")


@jobs.command("trigger")
@click.argument("job_id")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE",
              help="A python job's keyword argument for this run only, over the job's own "
              "(repeatable; VALUE is JSON, or else a string).")
@click.option("--watch", "-w", is_flag=True,
              help="Follow the execution until it ends; exit 5 unless it succeeded.")
@api_options
def jobs_trigger(conn: Conn, job_id: str, args: tuple[str, ...], watch: bool) -> None:
    """Run a job now, once, besides its schedule (the job itself is not changed)."""
    run_args = key_values(args, "--arg", json_values=True) if args else None
    execution = call(conn, lambda c: c.trigger_job(job_id, args=run_args), f"job {job_id}")
    if not watch:
        if conn.json:
            emit_json(execution)
        else:
            click.echo(f"triggered execution {line(execution['id'])} "
                       f"({styled_state(execution['state'])})")
        return
    if not conn.json:
        click.echo(f"triggered execution {line(execution['id'])}")
    _watch(conn, execution["id"], logs=True)


# executions


@click.group()
def executions() -> None:
    """Inspect executions (the runs of jobs) and their output."""


@executions.command("list")
@click.argument("job_id")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@api_options
def executions_list(conn: Conn, job_id: str, limit: int) -> None:
    """A job's executions, newest first."""
    page = call(conn, lambda c: c.list_executions(job_id, limit=limit), f"job {job_id}")
    if conn.json:
        emit_json(page)
        return
    table(["ID", "SCHEDULED FOR", "STATE", "ATTEMPT", "DURATION", "WORKER", "REASON"],
          [[e["id"], show_time(e["scheduled_for"]), e["state"], str(e["attempt"]),
            duration(e), e.get("worker") or "-", e.get("reason") or "-"]
           for e in page["items"]], state_column=2)


@executions.command("get")
@click.argument("execution_id")
@click.option("--watch", "-w", is_flag=True,
              help="Follow it until it ends; exit 5 unless it succeeded.")
@api_options
def executions_get(conn: Conn, execution_id: str, watch: bool) -> None:
    """One execution with its attempts."""
    if watch:
        _watch(conn, execution_id, logs=False)
        return
    execution = call(conn, lambda c: c.get_execution(execution_id),
                     f"execution {execution_id}")
    emit_json(execution) if conn.json else print_execution(execution)


@executions.command("logs")
@click.argument("execution_id")
@click.option("--attempt", type=int, help="Only this attempt's output, as it is.")
@click.option("--watch", "-w", is_flag=True,
              help="Print each attempt's output as it is written (new lines about every "
              "second while it runs) until the execution ends; exit 5 unless it succeeded.")
@api_options
def executions_logs(conn: Conn, execution_id: str, attempt: int | None, watch: bool) -> None:
    """The captured (truncated) output of an execution's attempts."""
    if watch:
        _watch(conn, execution_id, logs=True, only_attempt=attempt, quiet=True)
        return
    execution = call(conn, lambda c: c.get_execution(execution_id),
                     f"execution {execution_id}")
    attempts = execution.get("attempts") or []
    if attempt is not None:
        attempts = [a for a in attempts if a["attempt"] == attempt]
        if not attempts:
            fail(f"execution {execution_id} has no attempt {attempt}", EXIT_NOT_FOUND)
    if conn.json:
        emit_json([{k: a.get(k) for k in ("attempt", "outcome", "exit_code", "output")}
                   for a in attempts])
        return
    for item in attempts:
        _print_logs(item, header=attempt is None and len(attempts) > 1)


def _print_logs(item: Any, header: bool) -> None:
    if header:
        _print_header(item)
    output = block(item.get("output") or "")
    click.echo(output, nl=not output.endswith("\n") and bool(output))


def _print_header(item: Any) -> None:
    exit_code = "" if item.get("exit_code") is None else f", exit {item['exit_code']}"
    click.echo(click.style(line(f"--- attempt {item['attempt']} "
                                f"({item.get('outcome') or 'running'}{exit_code}) "
                                f"on {item.get('worker')} ---"), bold=True))


_TRUNCATION_NOTE = re.compile(r"\n\[output truncated: \d+ more bytes\]\Z")


class _OutputFollower:
    """Prints attempts' output as it is written: of a running attempt, the complete lines
    not printed yet (its output so far is written every output_flush_s); of an ended one,
    the rest. A header goes before an attempt's first line when ``header`` says so."""

    def __init__(self, header: Callable[[Any], bool]) -> None:
        self.header = header
        self.printed: dict[int, str] = {}  # attempt -> its output printed so far (made safe)
        self.ended: set[int] = set()

    def show(self, item: Any) -> None:
        number = item["attempt"]
        if number in self.ended:
            return
        done = item.get("finished_at") is not None
        text = block(item.get("output") or "")
        if not done:  # only whole lines, and not a cut's note that will change
            text = _TRUNCATION_NOTE.sub("", text)
            text = text[:text.rfind("\n") + 1]
        before = self.printed.get(number)
        if before is None:
            if not text and not done:
                return
            if self.header(item):
                _print_header(item)
            before = ""
        if text.startswith(before):
            click.echo(text[len(before):], nl=False)
        else:  # (never expected) it changed under what was printed: its lines again
            same = next((i for i, (a, b) in enumerate(zip(before, text, strict=False))
                         if a != b), min(len(before), len(text)))
            click.echo(text[text.rfind("\n", 0, same) + 1:], nl=False)
        self.printed[number] = text
        if done:
            self.ended.add(number)
            if text and not text.endswith("\n"):
                click.echo()


def _watch(conn: Conn, execution_id: str, *, logs: bool, only_attempt: int | None = None,
           quiet: bool = False) -> None:
    """Follow an execution to its end: one line per change (or one JSON object per line
    with --output json) and, when ``logs``, each attempt's output as it is written (lines
    of a running attempt as they arrive, the rest when it ends); exit 0 if it succeeded,
    5 if it ended otherwise."""
    follower = _OutputFollower(lambda item: not quiet or (
        only_attempt is None and item["attempt"] > 1))

    async def follow(client: Client) -> Execution:
        last: Execution | None = None
        shown: tuple[Any, ...] | None = None
        stream = logs and not conn.json
        async for execution in client.watch_execution(execution_id, interval=0.25,
                                                      output=stream):
            last = execution
            if conn.json:
                click.echo(json_text(execution))
                continue
            marker = (execution["state"], execution["attempt"],
                      len(execution.get("attempts") or []))
            if not quiet and marker != shown:  # not again for each new line of output
                worker = f" on {line(execution['worker'])}" if execution.get("worker") else ""
                click.echo(f"{datetime.now(UTC):%H:%M:%S}  "
                           f"{styled_state(execution['state'], 9)}  "
                           f"attempt {line(execution['attempt'])}{worker}")
            shown = marker
            if logs:
                for item in execution.get("attempts") or []:
                    if only_attempt is None or item["attempt"] == only_attempt:
                        follower.show(item)
        assert last is not None
        return last

    final = call(conn, follow, f"execution {execution_id}")
    if final["state"] != "succeeded":
        if not conn.json:
            reason = final.get("error") or final.get("reason") or ""
            click.echo(line(f"jobsched: execution {execution_id} ended {final['state']}"
                            + (f": {reason}" if reason else "")), err=True)
        sys.exit(EXIT_RUN_FAILED)


# cluster


@click.group()
def cluster() -> None:
    """The cluster as the api sees it."""


@cluster.command("status")
@api_options
def cluster_status(conn: Conn) -> None:
    """Leader, schedulers, live workers and queue depths."""
    status = call(conn, lambda c: c.cluster())
    if conn.json:
        emit_json(status)
        return
    leader = status.get("leader")
    if leader:
        click.echo(line(f"leader:     {leader.get('instance')} (epoch {leader.get('epoch')}, "
                        f"since {show_time(leader.get('since'))})"))
    else:
        click.echo("leader:     " + click.style("none", fg="red")
                   + " (no scheduler holds the lease: nothing fires)")
    schedulers = status.get("schedulers") or []
    names = [s["instance"] + (" (leader)" if s.get("leader") else "") for s in schedulers]
    click.echo(line(f"schedulers: {', '.join(names) or '-'}"))
    click.echo(line("queues:     " + queue_depths(status.get("queues") or {})))
    workers = status.get("workers") or []
    click.echo(f"workers:    {len(workers)}")
    if workers:
        table(["  WORKER", "IN FLIGHT"],
              [["  " + w["instance"], str(w.get("inflight", "-"))] for w in workers])


def queue_depths(queues: dict[str, Any]) -> str:
    """``executions 3 (high 0, normal 3, low 0), dead 1``: a breakdown (the priority bands
    of ``by_priority``) in brackets after the total it breaks down, not as a dict. Runs,
    not RabbitMQ's ``messages`` (of up to ``message_attempts`` runs each: the cluster
    view's JSON and the ``jobsched_queue_messages`` gauge show those)."""
    text = ""
    for name, depth in queues.items():
        if name == "messages":
            continue
        if isinstance(depth, dict):
            text += " (" + ", ".join(f"{part} {count}" for part, count in depth.items()) + ")"
        else:
            text += f"{', ' if text else ''}{name} {depth}"
    return text or "-"


def register(main: click.Group) -> None:
    """Add the client commands to the ``jobsched`` command."""
    from jobsched.cli_workflows import workflows

    main.add_command(jobs)
    main.add_command(executions)
    main.add_command(workflows)
    main.add_command(cluster)
