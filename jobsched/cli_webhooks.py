"""``jobsched webhooks …``: webhook endpoints and their delivery log, from a terminal.

Same conventions as ``jobsched jobs`` (jobsched/cli_client.py): ``--url``/``JOBSCHED_URL``,
``--token``/``JOBSCHED_TOKEN``, ``--output table|json`` and the documented exit codes.
"""

from __future__ import annotations

from typing import Any

import click

from jobsched.cli_client import (
    Conn,
    api_options,
    call,
    emit_json,
    key_values,
    show_time,
    styled_state,
    table,
)
from jobsched.client import Client
from jobsched.domain.webhooks import EVENT_TYPES

DELIVERY_STATES = ("pending", "succeeded", "failed", "exhausted")


def _labels(endpoint: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (endpoint.get("labels") or {}).items()) or "-"


def _enabled(endpoint: dict[str, Any]) -> str:
    if endpoint.get("enabled"):
        return click.style("enabled", fg="green")
    reason = endpoint.get("disabled_reason")
    return click.style("disabled", fg="red") + (f" ({reason})" if reason else "")


def print_endpoint(endpoint: dict[str, Any]) -> None:
    fields = [
        ("id", endpoint["id"]),
        ("url", endpoint["url"]),
        ("events", ", ".join(endpoint["events"])),
        ("labels", _labels(endpoint)),
        ("state", _enabled(endpoint)),
        ("description", endpoint.get("description") or "-"),
        ("created", show_time(endpoint.get("created_at"))),
        ("updated", show_time(endpoint.get("updated_at"))),
    ]
    if endpoint.get("previous_secret_until"):
        fields.append(("old secret", "also signs until "
                       + show_time(endpoint["previous_secret_until"], rel=True)))
    for key, value in fields:
        click.echo(f"{key + ':':<12} {value}")


def _print_secret(endpoint: dict[str, Any]) -> None:
    click.echo(f"secret:      {endpoint['secret']}")
    click.echo("(shown this once: give it to the receiver now, it verifies each delivery "
               "with it)", err=True)


@click.group()
def webhooks() -> None:
    """Webhook endpoints: told (signed, retried) when executions and workflow runs end."""


@webhooks.command("create")
@click.argument("endpoint_url", metavar="URL")
@click.option("--event", "events", multiple=True, required=True,
              type=click.Choice(EVENT_TYPES), help="An event to receive (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only events of jobs with this label (repeatable: all must match).")
@click.option("--description", default="", help="What the endpoint is for.")
@click.option("--disabled", is_flag=True, help="Create it disabled (nothing is recorded).")
@api_options
def webhooks_create(conn: Conn, endpoint_url: str, events: tuple[str, ...],
                    labels: tuple[str, ...], description: str, disabled: bool) -> None:
    """Create an endpoint that deliveries are POSTed to (http or https); its signing secret
    is printed this once.

    \b
      jobsched webhooks create https://hooks.example.com/jobsched \\
          --event execution.dead --label team=billing
    """
    body = {"url": endpoint_url, "events": list(events), "labels": key_values(labels, "--label"),
            "description": description, "enabled": not disabled}
    created = call(conn, lambda c: c.request("POST", "/api/v1/webhooks", json=body))
    if conn.json:
        emit_json(created)
        return
    click.echo(f"created webhook {created['id']}")
    print_endpoint(created)
    _print_secret(created)


@webhooks.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@api_options
def webhooks_list(conn: Conn, limit: int) -> None:
    """The namespace's endpoints, newest first."""
    page = call(conn, lambda c: c.request("GET", "/api/v1/webhooks", params={"limit": limit}))
    if conn.json:
        emit_json(page)
        return
    table(["ID", "URL", "EVENTS", "LABELS", "STATE"],
          [[e["id"], e["url"], ",".join(e["events"]), _labels(e),
            "enabled" if e["enabled"] else "disabled"] for e in page["items"]])
    if page.get("next_cursor"):
        click.echo(f"(more: this shows the newest {limit})", err=True)


@webhooks.command("get")
@click.argument("webhook_id")
@api_options
def webhooks_get(conn: Conn, webhook_id: str) -> None:
    """One endpoint (never its secret)."""
    endpoint = call(conn, lambda c: c.request("GET", f"/api/v1/webhooks/{webhook_id}"),
                    f"webhook {webhook_id}")
    emit_json(endpoint) if conn.json else print_endpoint(endpoint)


@webhooks.command("update")
@click.argument("webhook_id")
@click.option("--endpoint-url", help="A new URL to POST deliveries to.")
@click.option("--event", "events", multiple=True, type=click.Choice(EVENT_TYPES),
              help="Replaces the events received (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Set a label of the filter (repeatable).")
@click.option("--description")
@click.option("--enable/--disable", "enabled", default=None,
              help="Enabling sends what waited while it was disabled.")
@api_options
def webhooks_update(conn: Conn, webhook_id: str, endpoint_url: str | None,
                    events: tuple[str, ...],
                    labels: tuple[str, ...], description: str | None,
                    enabled: bool | None) -> None:
    """Change an endpoint: only what is given (a JSON merge patch)."""
    patch: dict[str, Any] = {}
    if endpoint_url is not None:
        patch["url"] = endpoint_url
    if events:
        patch["events"] = list(events)
    if labels:
        patch["labels"] = key_values(labels, "--label")
    if description is not None:
        patch["description"] = description
    if enabled is not None:
        patch["enabled"] = enabled
    if not patch:
        raise click.UsageError("nothing to change: give --endpoint-url, --event, --label, "
                               "--description, --enable or --disable")
    endpoint = call(conn, lambda c: c.request("PATCH", f"/api/v1/webhooks/{webhook_id}",
                                              json=patch), f"webhook {webhook_id}")
    if conn.json:
        emit_json(endpoint)
        return
    click.echo(f"updated webhook {endpoint['id']}")
    print_endpoint(endpoint)


@webhooks.command("delete")
@click.argument("webhook_id")
@api_options
def webhooks_delete(conn: Conn, webhook_id: str) -> None:
    """Delete an endpoint and its delivery log."""
    call(conn, lambda c: c.request("DELETE", f"/api/v1/webhooks/{webhook_id}"),
         f"webhook {webhook_id}")
    if conn.json:
        emit_json({"id": webhook_id, "deleted": True})
    else:
        click.echo(f"deleted webhook {webhook_id}")


@webhooks.command("rotate-secret")
@click.argument("webhook_id")
@api_options
def webhooks_rotate_secret(conn: Conn, webhook_id: str) -> None:
    """A new signing secret, printed this once; the old one also signs for 24 hours."""
    endpoint = call(conn, lambda c: c.request("POST",
                                              f"/api/v1/webhooks/{webhook_id}/rotate-secret"),
                    f"webhook {webhook_id}")
    if conn.json:
        emit_json(endpoint)
        return
    click.echo(f"new secret for webhook {endpoint['id']}; the old one also signs until "
               f"{show_time(endpoint.get('previous_secret_until'))}")
    _print_secret(endpoint)


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--state", type=click.Choice(DELIVERY_STATES))
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@api_options
def webhooks_deliveries(conn: Conn, webhook_id: str, state: str | None, limit: int) -> None:
    """An endpoint's deliveries, newest first: state, attempts, the last answer."""

    async def fetch(client: Client) -> Any:
        return await client.request("GET", f"/api/v1/webhooks/{webhook_id}/deliveries",
                                    params={"limit": limit, "state": state})

    page = call(conn, fetch, f"webhook {webhook_id}")
    if conn.json:
        emit_json(page)
        return
    rows = []
    for d in page["items"]:
        last = str(d["last_status"]) if d.get("last_status") is not None else "-"
        if d.get("last_error") and d["state"] != "succeeded":
            last += f" {d['last_error'][:60]}"
        due = show_time(d.get("next_attempt_at"), rel=True) if d.get("next_attempt_at") \
            else "-"
        rows.append([d["event_id"], d["event_type"], d["state"], str(d["attempts"]), last,
                     due, show_time(d["created_at"])])
    table(["EVENT ID", "TYPE", "STATE", "ATTEMPTS", "LAST ANSWER", "NEXT ATTEMPT", "CREATED"],
          rows, state_column=2)


@webhooks.command("redeliver")
@click.argument("webhook_id")
@click.argument("event_id")
@api_options
def webhooks_redeliver(conn: Conn, webhook_id: str, event_id: str) -> None:
    """Send a delivery again now (same webhook-id), with a fresh retry schedule."""
    delivery = call(conn, lambda c: c.request(
        "POST", f"/api/v1/webhooks/{webhook_id}/deliveries/{event_id}/redeliver"),
        f"delivery {event_id} of webhook {webhook_id}")
    if conn.json:
        emit_json(delivery)
    else:
        click.echo(f"delivery {delivery['event_id']} queued again: "
                   f"{styled_state(delivery['state'])}")


def register(main: click.Group) -> None:
    main.add_command(webhooks)
