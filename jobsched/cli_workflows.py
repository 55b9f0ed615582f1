"""``jobsched workflows``: create workflows from JSON or YAML files, start, follow, cancel and
retry their runs, over the HTTP API (``jobsched.Client``). Options, output and exit codes
are those of the other client commands (jobsched/cli_client.py, docs/cli.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from jobsched.cli_client import (
    EXIT_RUN_FAILED,
    Conn,
    api_options,
    call,
    emit_json,
    key_values,
    payload_summary,
    show_time,
    styled_state,
    table,
)
from jobsched.client import FINISHED_RUN_STATES, Client, RunNode, StoredWorkflow, WorkflowRun


def read_workflow_file(path: str, option: str = "--file") -> dict[str, Any]:
    """A workflow body from a JSON or YAML file ('-': stdin). JSON is tried first (it is
    YAML too, but faster and with exact numbers); then YAML."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                 param_hint=option) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{path} is neither JSON nor YAML: {exc}",
                                     param_hint=option) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping (a workflow)", param_hint=option)
    return data


def node_summary(node: dict[str, Any]) -> str:
    return payload_summary(node)  # type: ignore[arg-type]


def print_workflow(workflow: StoredWorkflow) -> None:
    last = workflow.get("last_run")
    schedule = workflow.get("schedule")
    zone = workflow.get("timezone") or "UTC"
    fields = [
        ("id", workflow["id"]),
        ("name", workflow.get("name", "-")),
        ("state", styled_state(workflow.get("state"))),
        ("schedule", f"{schedule}" + ("" if zone == "UTC" else f" ({zone})")
         if schedule else "none (started by hand)"),
        ("next fire", show_time(workflow.get("next_fire_at"), rel=True)),
        ("version", f"{workflow['version']} ({workflow['node_count']} nodes)"),
        ("labels", ", ".join(f"{k}={v}" for k, v in (workflow.get("labels") or {}).items())
         or "-"),
        ("created", show_time(workflow.get("created_at"))),
    ]
    if last:
        fields.append(("last run", f"{styled_state(last['state'])} "
                                   f"{show_time(last['scheduled_for'])} {last['id']}"))
    for key, value in fields:
        click.echo(f"{key + ':':<11} {value}")
    nodes = workflow.get("nodes") or []
    if nodes:
        click.echo("")
        table(["NODE", "AFTER", "RULE", "RUNS"],
              [[n["key"], ",".join(n.get("depends_on") or []) or "-",
                n.get("trigger_rule", "all_success"), node_summary(n)[:60]] for n in nodes])


def print_run(run: WorkflowRun) -> None:
    fields = [
        ("run", run["id"]),
        ("workflow", run["workflow_id"]),
        ("state", styled_state(run["state"])
         + (f" ({run['reason']})" if run.get("reason") else "")),
        ("scheduled", show_time(run["scheduled_for"])),
        ("started", show_time(run.get("started_at"))),
        ("finished", show_time(run.get("finished_at"))),
        ("input", orjson.dumps(run.get("input") or {}).decode()),
    ]
    for key, value in fields:
        click.echo(f"{key + ':':<11} {value}")
    nodes = run.get("nodes") or []
    if nodes:
        click.echo("")
        table(["NODE", "STATE", "ATTEMPT", "STARTED", "FINISHED", "EXECUTION"],
              [[n["key"], n["state"], "-" if n["attempt"] is None else str(n["attempt"]),
                show_time(n["started_at"]), show_time(n["finished_at"]),
                n["execution_id"] or "-"] for n in nodes], state_column=1)


@click.group()
def workflows() -> None:
    """Workflows (DAGs of nodes) and their runs."""


@workflows.command("create")
@click.option("--file", "-f", "file", required=True, metavar="PATH",
              help="The workflow as JSON or YAML ('-' for stdin).")
@click.option("--name", help="Overrides the file's name.")
@click.option("--schedule", "-s", help="Overrides the file's schedule.")
@api_options
def workflows_create(conn: Conn, file: str, name: str | None, schedule: str | None) -> None:
    """Create a workflow from a file.

    \b
      jobsched workflows create -f etl.yaml
    """
    body = read_workflow_file(file)
    for key, value in (("name", name), ("schedule", schedule)):
        if value is not None:
            body[key] = value
    created = call(conn, lambda c: c.create_workflow(body))
    if conn.json:
        emit_json(created)
        return
    fire = created.get("next_fire_at")
    click.echo(f"created workflow {created['id']} ({created['name']}), "
               f"{created['node_count']} nodes"
               + (f", next fire {show_time(fire, rel=True)}" if fire else ""))


@workflows.command("list")
@click.option("--state", type=click.Choice(["active", "paused", "cancelled"]))
@click.option("--name", help="Only workflows with exactly this name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@api_options
def workflows_list(conn: Conn, state: str | None, name: str | None, labels: tuple[str, ...],
                   limit: int) -> None:
    """List workflows, newest first."""
    page = call(conn, lambda c: c.list_workflows(state=state, name=name,
                                                 labels=key_values(labels, "--label"),
                                                 limit=limit))
    if conn.json:
        emit_json(page)
        return
    table(["ID", "NAME", "STATE", "NODES", "SCHEDULE", "NEXT FIRE", "LAST RUN"],
          [[w["id"], w.get("name", "-"), w["state"], str(w["node_count"]),
            w.get("schedule") or "-", show_time(w.get("next_fire_at"), rel=True),
            (w.get("last_run") or {}).get("state", "-")] for w in page["items"]],
          state_column=2)


@workflows.command("get")
@click.argument("id_")
@click.option("--run", "is_run", is_flag=True, help="ID is a run's: show it, node by node.")
@api_options
def workflows_get(conn: Conn, id_: str, is_run: bool) -> None:
    """Show a workflow and its nodes, or (--run) one run with every node's state."""
    if is_run:
        run = call(conn, lambda c: c.get_run(id_), f"run {id_}")
        emit_json(run) if conn.json else print_run(run)
        return
    workflow = call(conn, lambda c: c.get_workflow(id_), f"workflow {id_}")
    emit_json(workflow) if conn.json else print_workflow(workflow)


@workflows.command("update")
@click.argument("workflow_id")
@click.option("--file", "-f", "file", metavar="PATH",
              help="The changes (a JSON merge patch; 'nodes' is replaced whole) as JSON or "
              "YAML, or a whole new definition.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=JSON",
              help="One field, as JSON: --set schedule='\"0 3 * * *\"'.")
@api_options
def workflows_update(conn: Conn, workflow_id: str, file: str | None,
                     sets: tuple[str, ...]) -> None:
    """Change a workflow; runs started from then on use the change."""
    changes = read_workflow_file(file) if file else {}
    changes.update(key_values(sets, "--set", json_values=True))
    if not changes:
        raise click.UsageError("nothing to change: give --file or --set")
    workflow = call(conn, lambda c: c.update_workflow(workflow_id, changes),
                    f"workflow {workflow_id}")
    if conn.json:
        emit_json(workflow)
        return
    click.echo(f"updated workflow {workflow['id']} (version {workflow['version']})")


def _workflow_action(verb: str, method: str, doc: str) -> click.Command:
    @workflows.command(verb, help=doc)
    @click.argument("workflow_id")
    @api_options
    def command(conn: Conn, workflow_id: str) -> None:
        workflow = call(conn, lambda c: getattr(c, method)(workflow_id),
                        f"workflow {workflow_id}")
        if conn.json:
            emit_json(workflow)
        else:
            click.echo(f"workflow {workflow['id']}: {styled_state(workflow['state'])}")

    return command


workflows_pause = _workflow_action("pause", "pause_workflow",
                                   "Pause a workflow's schedule (runs by hand still start).")
workflows_resume = _workflow_action("resume", "resume_workflow", "Resume a paused workflow.")


@workflows.command("cancel")
@click.argument("id_")
@click.option("--run", "is_run", is_flag=True,
              help="ID is a run's: cancel that run only (queued nodes cancelled, running ones "
              "stopped).")
@api_options
def workflows_cancel(conn: Conn, id_: str, is_run: bool) -> None:
    """Cancel a workflow (no new runs; running runs cancelled), or (--run) one run."""
    if is_run:
        run = call(conn, lambda c: c.cancel_run(id_), f"run {id_}")
        emit_json(run) if conn.json else click.echo(
            f"run {run['id']}: {styled_state(run['state'])}")
        return
    workflow = call(conn, lambda c: c.cancel_workflow(id_), f"workflow {id_}")
    emit_json(workflow) if conn.json else click.echo(
        f"workflow {workflow['id']}: {styled_state(workflow['state'])}")


@workflows.command("run")
@click.argument("workflow_id")
@click.option("--input", "input_json", metavar="JSON", help="The run's input, a JSON object.")
@click.option("--input-file", metavar="PATH", help="The run's input from a JSON or YAML file.")
@click.option("--watch", "-w", is_flag=True,
              help="Follow the run until it ends; exit 5 unless it succeeded.")
@api_options
def workflows_run(conn: Conn, workflow_id: str, input_json: str | None,
                  input_file: str | None, watch: bool) -> None:
    """Start a run now."""
    if input_json and input_file:
        raise click.UsageError("give --input or --input-file, not both")
    run_input: dict[str, Any] = {}
    if input_file:
        run_input = read_workflow_file(input_file, "--input-file")
    elif input_json:
        try:
            run_input = orjson.loads(input_json)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
        if not isinstance(run_input, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--input")
    run = call(conn, lambda c: c.start_run(workflow_id, run_input), f"workflow {workflow_id}")
    if not watch:
        emit_json(run) if conn.json else click.echo(f"started run {run['id']}")
        return
    if not conn.json:
        click.echo(f"started run {run['id']}")
    _watch_run(conn, run["id"])


@workflows.command("runs")
@click.argument("workflow_id")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@api_options
def workflows_runs(conn: Conn, workflow_id: str, limit: int) -> None:
    """A workflow's runs, newest first."""
    page = call(conn, lambda c: c.list_runs(workflow_id, limit=limit),
                f"workflow {workflow_id}")
    if conn.json:
        emit_json(page)
        return
    table(["RUN", "SCHEDULED FOR", "STATE", "FINISHED", "REASON"],
          [[r["id"], show_time(r["scheduled_for"]), r["state"], show_time(r["finished_at"]),
            (r.get("reason") or "")[:50]] for r in page["items"]], state_column=2)


@workflows.command("retry")
@click.argument("run_id")
@click.option("--watch", "-w", is_flag=True,
              help="Follow the run until it ends; exit 5 unless it succeeded.")
@api_options
def workflows_retry(conn: Conn, run_id: str, watch: bool) -> None:
    """Run again what failed in a run (failed, upstream_failed and cancelled nodes, and
    what depends on them); what succeeded is kept."""
    run = call(conn, lambda c: c.retry_run(run_id), f"run {run_id}")
    if not watch:
        emit_json(run) if conn.json else click.echo(
            f"run {run['id']}: {styled_state(run['state'])} ({run.get('reason') or ''})")
        return
    _watch_run(conn, run_id)


def _changes(before: Sequence[RunNode], after: Sequence[RunNode]) -> list[str]:
    seen = {n["key"]: (n["state"], n["attempt"]) for n in before}
    return [n["key"] for n in after if seen.get(n["key"]) != (n["state"], n["attempt"])]


def _watch_run(conn: Conn, run_id: str) -> None:
    """Follow a run: one line per node that changes (or one JSON object per change with
    --output json); exit 0 if it succeeded, 5 otherwise."""

    async def follow(client: Client) -> WorkflowRun:
        shown: list[RunNode] = []
        while True:
            run = await client.get_run(run_id)
            nodes = list(run.get("nodes") or [])
            changed = _changes(shown, nodes)
            if changed:
                if conn.json:
                    click.echo(orjson.dumps(run).decode())
                else:
                    stamp = f"{datetime.now(UTC):%H:%M:%S}"
                    for node in nodes:
                        if node["key"] in changed:
                            attempt = f" attempt {node['attempt']}" if node["attempt"] else ""
                            click.echo(f"{stamp}  {styled_state(node['state'], 15)}  "
                                       f"{node['key']}{attempt}")
                shown = nodes
            if run["state"] in FINISHED_RUN_STATES:
                return run
            await asyncio.sleep(0.25)

    final = call(conn, follow, f"run {run_id}")
    if not conn.json:
        click.echo(f"run {run_id} {styled_state(final['state'])}")
    if final["state"] != "succeeded":
        sys.exit(EXIT_RUN_FAILED)
