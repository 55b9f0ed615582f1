"""A Python client for the jobsched HTTP API: ``Client`` (asyncio) and ``SyncClient``.

    from jobsched import Client, task

    @task
    def send_report(team: str) -> None: ...

    async with Client("http://127.0.0.1:8080", token="...") as client:
        job = await client.schedule(send_report, cron="0 9 * * *",
                                    timezone="Europe/Berlin", args={"team": "billing"})
        async for execution in client.watch_execution(job["last_execution"]["id"]): ...

Every call maps to one HTTP request (or one per page for ``iter_*``). Responses are the
API's JSON, typed as ``TypedDict``s so editors and mypy know their fields. A non-2xx answer
raises ``ApiError`` carrying the server's problem+json (status, title, detail, and the
field errors); an unreachable server raises ``ConnectionFailed``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict, TypeVar, cast
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from jobsched.domain.states import TERMINAL_EXECUTION_STATES
from jobsched.domain.workflows import FINISHED_RUN_STATES as FINISHED_RUN_STATE_SET

__all__ = [
    "TERMINAL_STATES",
    "ApiError",
    "Attempt",
    "Client",
    "ClusterStatus",
    "ConnectionFailed",
    "Execution",
    "FieldError",
    "FireTime",
    "Job",
    "Page",
    "RunNode",
    "StoredWorkflow",
    "SyncClient",
    "Workflow",
    "WorkflowRun",
]

DEFAULT_URL = "http://127.0.0.1:8080"
#: Execution states that are over (the domain's set, as plain strings).
TERMINAL_STATES: frozenset[str] = frozenset(s.value for s in TERMINAL_EXECUTION_STATES)
#: Run states that are over.
FINISHED_RUN_STATES: frozenset[str] = frozenset(s.value for s in FINISHED_RUN_STATE_SET)

T = TypeVar("T")


class FieldError(TypedDict):
    field: str
    reason: str


class Attempt(TypedDict):
    attempt: int
    worker: str
    started_at: str
    finished_at: str | None
    outcome: str | None
    exit_code: int | None
    error: str | None
    output: str | None


class Execution(TypedDict):
    id: str
    job_id: str
    scheduled_for: str
    state: str
    reason: NotRequired[str | None]
    priority: NotRequired[Literal["high", "normal", "low"]]
    attempt: int
    worker: str | None
    queued_at: str
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    error: str | None
    output: str | None
    args: NotRequired[dict[str, Any] | None]  # a run triggered with args: those
    workflow_run_id: NotRequired[str | None]  # a workflow node's execution: its run
    result: NotRequired[Any]  # a workflow node's return value (JSON)
    attempts: NotRequired[list[Attempt] | None]


class Job(TypedDict):
    """A job as the API returns it: the submitted spec plus the server's fields."""

    id: str
    namespace: str
    name: str
    schedule: str
    timezone: str
    kind: Literal["shell", "http", "python"]
    state: str
    next_fire_at: str | None
    created_at: str
    updated_at: str
    last_execution: Execution | None
    shell: NotRequired[dict[str, Any]]
    http: NotRequired[dict[str, Any]]
    python: NotRequired[dict[str, Any]]
    timeout_s: NotRequired[float]
    retry: NotRequired[dict[str, Any]]
    labels: NotRequired[dict[str, str]]
    priority: NotRequired[Literal["high", "normal", "low"]]


class Page(TypedDict):
    items: list[Any]
    next_cursor: str | None


class FireTime(TypedDict):
    utc: str
    local: str


class ClusterStatus(TypedDict):
    leader: dict[str, Any] | None
    schedulers: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    queues: dict[str, int]


class RunNode(TypedDict):
    key: str
    state: str  # pending, queued, running, succeeded, failed, upstream_failed, skipped, ...
    execution_id: str | None
    attempt: int | None
    started_at: str | None
    finished_at: str | None
    depends_on: list[str]
    trigger_rule: str
    error: NotRequired[str | None]


class WorkflowRun(TypedDict):
    id: str
    workflow_id: str
    workflow_name: NotRequired[str | None]
    state: str  # running, succeeded, failed, cancelled (skipped, missed: fires not run)
    reason: NotRequired[str | None]
    scheduled_for: str
    started_at: str
    finished_at: str | None
    input: dict[str, Any]
    nodes: list[RunNode] | None  # None in lists


class StoredWorkflow(TypedDict):
    """A workflow as the API returns it: the submitted spec plus the server's fields."""

    id: str
    namespace: str
    name: str
    state: str
    schedule: str | None
    timezone: NotRequired[str]
    next_fire_at: str | None
    version: int
    node_count: int
    created_at: str
    updated_at: str
    last_run: WorkflowRun | None
    nodes: NotRequired[list[dict[str, Any]]]  # not in lists
    labels: NotRequired[dict[str, str]]


class Workflow:
    """A workflow defined in code: nodes (``@task`` functions, or any job kind), each
    naming its parents. ``node()`` returns the node's key, to pass in ``after=``.

        flow = Workflow("nightly-etl", schedule="0 2 * * *", timezone="Europe/Berlin")
        raw = flow.node(extract)
        clean = flow.node(transform, after=[raw], retry={"max_attempts": 3})
        flow.node(report, after=[clean], trigger_rule="all_done", args={"team": "data"})
        created = await client.create_workflow(flow)

    A function that declares ``upstream`` gets its parents' return values by key, one
    that declares ``input`` the run's input (``client.start_run(id, input={...})``).
    """

    def __init__(self, name: str, *, schedule: str | None = None, timezone: str = "UTC",
                 **fields: Any) -> None:
        self.name = name
        self.fields: dict[str, Any] = {"timezone": timezone, **fields}
        if schedule is not None:
            self.fields["schedule"] = schedule
        self.nodes: list[dict[str, Any]] = []

    def node(self, function: Callable[..., Any], *, key: str | None = None,
             after: list[str] | tuple[str, ...] = (), args: Mapping[str, Any] | None = None,
             trigger_rule: str | None = None, **fields: Any) -> str:
        """A python node running a ``@task`` (key: the function's name unless given)."""
        name = task_name(function)
        return self.add({
            "key": key or name.rpartition(":")[2].rpartition(".")[2],
            "kind": "python", "python": {"function": name, "args": dict(args or {})},
            **fields}, after=after, trigger_rule=trigger_rule)

    def add(self, node: Mapping[str, Any], *, after: list[str] | tuple[str, ...] = (),
            trigger_rule: str | None = None) -> str:
        """Any node as the API takes it (``{"key": …, "kind": "shell", "shell": …}``)."""
        body = dict(node)
        if after:
            body["depends_on"] = [*body.get("depends_on", []), *after]
        if trigger_rule is not None:
            body["trigger_rule"] = trigger_rule
        if any(n["key"] == body["key"] for n in self.nodes):
            raise ValueError(f"a node with key {body['key']!r} exists already")
        self.nodes.append(body)
        return str(body["key"])

    def to_json(self) -> dict[str, Any]:
        """The body ``POST /api/v1/workflows`` takes."""
        return {"name": self.name, **self.fields, "nodes": [dict(n) for n in self.nodes]}


class ApiError(Exception):
    """The API answered with an error: its RFC 9457 problem details, parsed."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 errors: list[FieldError] | None = None, body: Any = None,
                 method: str = "", path: str = "") -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors: list[FieldError] = errors or []
        self.body = body
        self.method = method
        self.path = path
        super().__init__(self.one_line())

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def invalid(self) -> bool:
        """The request was rejected as malformed or invalid (400 or 422)."""
        return self.status in (400, 422)

    def one_line(self) -> str:
        """``422 Invalid job: schedule: ...; name: ...``: all of it, on one line."""
        text = f"{self.status} {self.title}"
        if self.errors:
            text += ": " + "; ".join(f"{e['field']}: {e['reason']}" for e in self.errors)
        elif self.detail:
            text += f": {self.detail}"
        return " ".join(text.split())

    @classmethod
    def from_response(cls, status: int, reason: str | None, data: bytes,
                      method: str = "", path: str = "") -> ApiError:
        try:
            body = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            body = data.decode("utf-8", "replace")
        if isinstance(body, dict):
            errors = body.get("errors")
            return cls(status, str(body.get("title") or reason or "Error"),
                       body.get("detail"), errors if isinstance(errors, list) else None,
                       body, method, path)
        detail = body.strip()[:200] if isinstance(body, str) and body.strip() else None
        return cls(status, reason or "Error", detail, None, body, method, path)


class ConnectionFailed(Exception):
    """The API could not be reached (refused, DNS, timeout): nothing was answered."""


def _when(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant: give it a tzinfo")
    return value.isoformat()


def _every(value: timedelta | float | str) -> str:
    if isinstance(value, str):
        return value if value.startswith("@every") else f"@every {value}"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    # Plain decimal seconds, never an exponent (``:g`` wrote 12 days as 1.0368e+06s),
    # to the microsecond, the finest the duration grammar takes.
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"@every {text}s"


def task_name(function: Callable[..., Any]) -> str:
    """The registry key a ``@task``-decorated function is known by on the workers."""
    name = getattr(function, "__jobsched_task__", None)
    if not isinstance(name, str):
        raise TypeError(f"{getattr(function, '__qualname__', function)!r} is not a @task: "
                        "decorate it with jobsched.task so workers can run it")
    if name.startswith("__main__:"):
        # The key of a function of the script being run: no worker imports "__main__",
        # so every run would be dead (not registered on the worker).
        raise ValueError(f"{name!r} is defined in the script being run (__main__), which no "
                         "worker imports: define it in a module, import it from there and "
                         "give that module to the workers (jobsched run --import MODULE)")
    return name


def check_base_url(url: str) -> str:
    """The root URL of an api (``http://host:port``, or under a proxy's path prefix),
    without its trailing slash; ``ValueError`` with a one-line reason and a hint if it
    cannot be one."""
    example = "http://127.0.0.1:8080"
    if not url.strip():
        raise ValueError(f"the URL is empty: give the api's root URL, e.g. {example}")
    if url != url.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError(f"{url!r} holds spaces or control characters: give the api's root "
                         f"URL alone, e.g. {example}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        guess = f": did you mean http://{url}?" if "://" not in url else ""
        raise ValueError(f"{url!r} is not an http:// or https:// URL{guess}")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host: give the api's root URL, e.g. {example}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not one
    except ValueError:
        raise ValueError(f"{url!r} has a port that is not a number from 0 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a query or fragment: give the api's root URL, e.g. "
                         f"{example}")
    return url.rstrip("/")


def check_token(token: str | None) -> None:
    """A token is printable ASCII without spaces (``jsk_…``): a line break or space in it
    (a copy with the newline, a file read as it is) is refused here, with the fix, rather
    than failing inside the HTTP library."""
    if token and any(not 0x21 <= ord(c) <= 0x7E for c in token):
        what = "a line break" if any(c in token for c in "\r\n") else \
            "a space or a character that is not printable ASCII"
        raise ValueError(f"the token holds {what}: give the token alone (strip the newline "
                         "of a file or copy; $(jobsched token create ...) has none)")


class Client:
    """Async client of one jobsched API. Use as ``async with Client(url) as client``
    (or call ``close()``); an aiohttp session may be passed in and is then not closed."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = 30.0, session: aiohttp.ClientSession | None = None) -> None:
        check_token(token)
        self.url = check_base_url(url)
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, application/problem+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None) -> Any:
        """One API call: the decoded JSON body, or ``ApiError``/``ConnectionFailed``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        all_headers = {**self._headers(), **(headers or {})}
        data = None
        if json is not None:
            data = orjson.dumps(json)
            all_headers["Content-Type"] = "application/json"
        query: list[tuple[str, str]] = []
        for key, value in (params or {}).items():
            values = value if isinstance(value, list | tuple) else [value]
            query += [(key, str(v)) for v in values if v is not None]
        try:
            async with self._session.request(method, self.url + path, data=data,
                                             params=query, headers=all_headers) as response:
                body = await response.read()
                if response.status >= 400:
                    raise ApiError.from_response(response.status, response.reason, body,
                                                 method, path)
                return orjson.loads(body) if body else None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {_reason(exc)}") from exc
        except orjson.JSONDecodeError as exc:
            raise ConnectionFailed(f"{self.url} did not answer with JSON: {exc}") from exc

    # jobs

    async def create_job(self, job: Mapping[str, Any], *,
                         idempotency_key: str | None = None) -> Job:
        """Submit a job (see the API's job body); the 201 means it is committed.
        ``idempotency_key`` is sent as the ``Idempotency-Key`` header, which the API
        contract reserves for making a retried create return the first job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return cast(Job, await self.request("POST", "/api/v1/jobs", json=dict(job),
                                            headers=headers))

    async def list_jobs(self, *, state: str | None = None, name: str | None = None,
                        labels: Mapping[str, str] | None = None, limit: int | None = None,
                        cursor: str | None = None) -> Page:
        """One page of jobs, newest first; pass ``next_cursor`` back for the next page."""
        params: dict[str, Any] = {"state": state, "name": name, "limit": limit,
                                  "cursor": cursor}
        if labels:
            params["label"] = [f"{k}={v}" for k, v in labels.items()]
        return cast(Page, await self.request("GET", "/api/v1/jobs", params=params))

    async def iter_jobs(self, *, state: str | None = None, name: str | None = None,
                        labels: Mapping[str, str] | None = None,
                        page_size: int = 100) -> AsyncIterator[Job]:
        """Every matching job, following the cursor page by page."""
        cursor = None
        while True:
            page = await self.list_jobs(state=state, name=name, labels=labels,
                                        limit=page_size, cursor=cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def get_job(self, job_id: str) -> Job:
        return cast(Job, await self.request("GET", f"/api/v1/jobs/{_id(job_id)}"))

    async def explain_job(self, job_id: str) -> dict[str, Any]:
        """Why a job did or did not run: its next fire and why, its recent fires not run
        as planned with their reasons, live workers and its band's queue depth."""
        return cast(dict[str, Any],
                    await self.request("GET", f"/api/v1/jobs/{_id(job_id)}/explain"))

    async def update_job(self, job_id: str, changes: Mapping[str, Any]) -> Job:
        """Change a job's schedule, payload or policies. ``changes`` is a JSON merge patch
        (RFC 7396): objects merge, ``None`` removes a key, anything else replaces."""
        return cast(Job, await self.request("PATCH", f"/api/v1/jobs/{_id(job_id)}",
                                            json=dict(changes)))

    async def cancel_job(self, job_id: str) -> Job:
        """No further fires; queued runs are cancelled and running ones stopped."""
        return cast(Job, await self.request("DELETE", f"/api/v1/jobs/{_id(job_id)}"))

    async def pause_job(self, job_id: str) -> Job:
        return cast(Job, await self.request("POST", f"/api/v1/jobs/{_id(job_id)}/pause"))

    async def resume_job(self, job_id: str) -> Job:
        return cast(Job, await self.request("POST", f"/api/v1/jobs/{_id(job_id)}/resume"))

    async def trigger_job(self, job_id: str, *,
                          args: Mapping[str, Any] | None = None) -> Execution:
        """Run the job now, once, besides its schedule; returns the new execution.
        ``args`` (a python job's) are merged over the job's own for this run only."""
        body = {"args": dict(args)} if args is not None else None
        return cast(Execution, await self.request(
            "POST", f"/api/v1/jobs/{_id(job_id)}/trigger", json=body))

    async def schedule(self, function: Callable[..., Any], *, cron: str | None = None,
                       at: datetime | str | None = None,
                       every: timedelta | float | str | None = None,
                       timezone: str = "UTC", args: Mapping[str, Any] | None = None,
                       name: str | None = None, **options: Any) -> Job:
        """Schedule a ``@task`` function: by ``cron``, once ``at`` a time, ``every`` an
        interval, or (none of them) immediately. ``args`` are its keyword arguments, as
        JSON; ``options`` are further job fields (``timeout_s``, ``retry``, ``labels``)."""
        given = [s for s in (cron, at, every) if s is not None]
        if len(given) > 1:
            raise ValueError("give at most one of cron, at and every")
        function_name = task_name(function)
        if cron is not None:
            schedule = cron
        elif at is not None:
            schedule = cast(str, _when(at))
        elif every is not None:
            schedule = _every(every)
        else:
            schedule = "immediate"
        job: dict[str, Any] = {
            "name": name or function_name.rpartition(":")[2],
            "schedule": schedule,
            "timezone": timezone,
            "kind": "python",
            "python": {"function": function_name, "args": dict(args or {})},
            **options,
        }
        return await self.create_job(job)

    # executions

    async def list_executions(self, job_id: str, *, limit: int | None = None,
                              cursor: str | None = None) -> Page:
        """One page of a job's executions, newest first."""
        return cast(Page, await self.request(
            "GET", f"/api/v1/jobs/{_id(job_id)}/executions",
            params={"limit": limit, "cursor": cursor}))

    async def iter_executions(self, job_id: str, *,
                              page_size: int = 100) -> AsyncIterator[Execution]:
        cursor = None
        while True:
            page = await self.list_executions(job_id, limit=page_size, cursor=cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def get_execution(self, execution_id: str) -> Execution:
        """One execution with its attempts and their (truncated) output."""
        return cast(Execution,
                    await self.request("GET", f"/api/v1/executions/{_id(execution_id)}"))

    async def watch_execution(self, execution_id: str, *, interval: float = 0.5,
                              timeout: float | None = None,
                              output: bool = False) -> AsyncIterator[Execution]:
        """Yield the execution each time its state or attempt changes (with ``output``,
        also each time a running attempt's output grows: it is written every
        ``output_flush_s``), ending with the terminal one. ``TimeoutError`` if it is not
        over within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[Any, ...] | None = None
        while True:
            execution = await self.get_execution(execution_id)
            attempts = execution.get("attempts") or []
            marker = (execution["state"], execution["attempt"], len(attempts),
                      tuple(a.get("output") for a in attempts) if output else None)
            if marker != seen:
                seen = marker
                yield execution
            if execution["state"] in TERMINAL_STATES:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"execution {execution_id} still {execution['state']}")
            await asyncio.sleep(interval)

    async def wait_execution(self, execution_id: str, *, interval: float = 0.5,
                             timeout: float | None = None) -> Execution:
        """The execution once it is terminal (succeeded, failed, dead, ...)."""
        seen: list[Execution] = []
        async for execution in self.watch_execution(execution_id, interval=interval,
                                                    timeout=timeout):
            seen[:] = [execution]
        return seen[0]

    async def wait_first_execution(self, job_id: str, *, interval: float = 0.5,
                                   timeout: float | None = None) -> Execution:
        """A job's first execution, once it has ended (the job may have to fire first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            items = (await self.list_executions(job_id, limit=500))["items"]
            if items:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                return await self.wait_execution(items[-1]["id"], interval=interval,
                                                 timeout=remaining)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} has not fired")
            await asyncio.sleep(interval)

    # workflows

    async def create_workflow(self, workflow: Workflow | Mapping[str, Any], *,
                              idempotency_key: str | None = None) -> StoredWorkflow:
        """Submit a workflow (a ``Workflow`` or the API's JSON body)."""
        body = workflow.to_json() if isinstance(workflow, Workflow) else dict(workflow)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return cast(StoredWorkflow, await self.request("POST", "/api/v1/workflows", json=body,
                                                       headers=headers))

    async def list_workflows(self, *, state: str | None = None, name: str | None = None,
                             labels: Mapping[str, str] | None = None,
                             limit: int | None = None, cursor: str | None = None) -> Page:
        """One page of workflows (without their nodes), newest first."""
        params: dict[str, Any] = {"state": state, "name": name, "limit": limit,
                                  "cursor": cursor}
        if labels:
            params["label"] = [f"{k}={v}" for k, v in labels.items()]
        return cast(Page, await self.request("GET", "/api/v1/workflows", params=params))

    async def get_workflow(self, workflow_id: str) -> StoredWorkflow:
        return cast(StoredWorkflow,
                    await self.request("GET", f"/api/v1/workflows/{_id(workflow_id)}"))

    async def update_workflow(self, workflow_id: str,
                              changes: Mapping[str, Any]) -> StoredWorkflow:
        """A JSON merge patch (``nodes`` is replaced whole); new runs use the change."""
        return cast(StoredWorkflow, await self.request(
            "PATCH", f"/api/v1/workflows/{_id(workflow_id)}", json=dict(changes)))

    async def cancel_workflow(self, workflow_id: str) -> StoredWorkflow:
        """No new runs; running runs are cancelled."""
        return cast(StoredWorkflow,
                    await self.request("DELETE", f"/api/v1/workflows/{_id(workflow_id)}"))

    async def pause_workflow(self, workflow_id: str) -> StoredWorkflow:
        return cast(StoredWorkflow, await self.request(
            "POST", f"/api/v1/workflows/{_id(workflow_id)}/pause"))

    async def resume_workflow(self, workflow_id: str) -> StoredWorkflow:
        return cast(StoredWorkflow, await self.request(
            "POST", f"/api/v1/workflows/{_id(workflow_id)}/resume"))

    async def start_run(self, workflow_id: str,
                        input: Mapping[str, Any] | None = None) -> WorkflowRun:
        """Start a run now; ``input`` is given to every python node that asks for it."""
        return cast(WorkflowRun, await self.request(
            "POST", f"/api/v1/workflows/{_id(workflow_id)}/runs",
            json={"input": dict(input or {})}))

    async def list_runs(self, workflow_id: str, *, limit: int | None = None,
                        cursor: str | None = None) -> Page:
        """One page of a workflow's runs (without their nodes), newest first."""
        return cast(Page, await self.request(
            "GET", f"/api/v1/workflows/{_id(workflow_id)}/runs",
            params={"limit": limit, "cursor": cursor}))

    async def get_run(self, run_id: str) -> WorkflowRun:
        """One run with every node's state."""
        return cast(WorkflowRun, await self.request("GET", f"/api/v1/workflow-runs/{_id(run_id)}"))

    async def cancel_run(self, run_id: str) -> WorkflowRun:
        return cast(WorkflowRun, await self.request(
            "POST", f"/api/v1/workflow-runs/{_id(run_id)}/cancel"))

    async def retry_run(self, run_id: str) -> WorkflowRun:
        """Run again the failed, upstream_failed and cancelled nodes (and what depends on
        them) of a failed or cancelled run; what succeeded is kept."""
        return cast(WorkflowRun, await self.request(
            "POST", f"/api/v1/workflow-runs/{_id(run_id)}/retry"))

    async def wait_run(self, run_id: str, *, interval: float = 0.5,
                       timeout: float | None = None) -> WorkflowRun:
        """The run once it is over (succeeded, failed, cancelled). ``TimeoutError`` if
        it is not within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get_run(run_id)
            if run["state"] in FINISHED_RUN_STATES:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {run['state']}")
            await asyncio.sleep(interval)

    # schedules and cluster

    async def preview_schedule(self, schedule: str, timezone: str = "UTC", *,
                               start: datetime | str | None = None,
                               count: int | None = None, job_id: str | None = None,
                               seed: str | None = None) -> list[FireTime]:
        """The next fire times of a schedule, without creating anything; an invalid
        schedule is an ``ApiError`` (422) naming the field, like on create. A schedule
        with hashed values (``H``) needs ``job_id`` (whose values) or a ``seed``."""
        body: dict[str, Any] = {"schedule": schedule, "timezone": timezone}
        if start is not None:
            body["start"] = _when(start)
        if count is not None:
            body["count"] = count
        if job_id is not None:
            body["job_id"] = str(job_id)
        if seed is not None:
            body["seed"] = seed
        result = await self.request("POST", "/api/v1/schedules/preview", json=body)
        return cast(list[FireTime], result["items"])

    # dead letters

    async def list_dead(self, *, job_id: str | None = None, limit: int | None = None,
                        cursor: str | None = None) -> Page:
        """One page of dead executions (every attempt failed), the most recently dead
        first: of the namespace, or of one job."""
        return cast(Page, await self.request(
            "GET", "/api/v1/dead", params={"job_id": job_id, "limit": limit, "cursor": cursor}))

    async def iter_dead(self, *, job_id: str | None = None,
                        page_size: int = 100) -> AsyncIterator[Execution]:
        cursor = None
        while True:
            page = await self.list_dead(job_id=job_id, limit=page_size, cursor=cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def retry_execution(self, execution_id: str) -> Execution:
        """Re-drive a dead execution: one more attempt of it, now (409 if it is not dead,
        its job is cancelled, or it is a workflow node's: retry the run instead)."""
        return cast(Execution, await self.request(
            "POST", f"/api/v1/executions/{_id(execution_id)}/retry"))

    async def cluster(self) -> ClusterStatus:
        """Leader, schedulers, live workers and queue depths."""
        return cast(ClusterStatus, await self.request("GET", "/api/v1/cluster"))

    async def ready(self) -> dict[str, Any]:
        """The api process's readiness report (also when not ready: no ``ApiError``)."""
        try:
            return cast(dict[str, Any], await self.request("GET", "/readyz"))
        except ApiError as exc:
            if exc.status == 503 and isinstance(exc.body, dict):
                return exc.body
            raise


def _reason(exc: BaseException) -> str:
    """``connection refused`` rather than aiohttp's paragraph about it."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    cause = getattr(exc, "os_error", None)
    if isinstance(cause, socket.gaierror) and cause.strerror:
        return f"cannot resolve the host: {cause.strerror.lower()}"
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()
    return str(exc) or type(exc).__name__


def _id(value: str) -> str:
    return quote(str(value), safe="")


class SyncClient:
    """The same calls as ``Client``, blocking: for scripts and REPLs without asyncio.
    It owns an event loop; do not use it from inside a running one."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = 30.0) -> None:
        self._runner = asyncio.Runner()
        self.client = Client(url, token, timeout=timeout)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self.client.close())
        self._runner.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(call)

    def create_job(self, job: Mapping[str, Any], *,
                   idempotency_key: str | None = None) -> Job:
        return self._run(self.client.create_job(job, idempotency_key=idempotency_key))

    def list_jobs(self, *, state: str | None = None, name: str | None = None,
                  labels: Mapping[str, str] | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Page:
        return self._run(self.client.list_jobs(state=state, name=name, labels=labels,
                                               limit=limit, cursor=cursor))

    def iter_jobs(self, *, state: str | None = None, name: str | None = None,
                  labels: Mapping[str, str] | None = None,
                  page_size: int = 100) -> Iterator[Job]:
        cursor = None
        while True:
            page = self.list_jobs(state=state, name=name, labels=labels, limit=page_size,
                                  cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def get_job(self, job_id: str) -> Job:
        return self._run(self.client.get_job(job_id))

    def explain_job(self, job_id: str) -> dict[str, Any]:
        return self._run(self.client.explain_job(job_id))

    def update_job(self, job_id: str, changes: Mapping[str, Any]) -> Job:
        return self._run(self.client.update_job(job_id, changes))

    def cancel_job(self, job_id: str) -> Job:
        return self._run(self.client.cancel_job(job_id))

    def pause_job(self, job_id: str) -> Job:
        return self._run(self.client.pause_job(job_id))

    def resume_job(self, job_id: str) -> Job:
        return self._run(self.client.resume_job(job_id))

    def trigger_job(self, job_id: str, *, args: Mapping[str, Any] | None = None) -> Execution:
        return self._run(self.client.trigger_job(job_id, args=args))

    def schedule(self, function: Callable[..., Any], *, cron: str | None = None,
                 at: datetime | str | None = None,
                 every: timedelta | float | str | None = None, timezone: str = "UTC",
                 args: Mapping[str, Any] | None = None, name: str | None = None,
                 **options: Any) -> Job:
        return self._run(self.client.schedule(function, cron=cron, at=at, every=every,
                                              timezone=timezone, args=args, name=name,
                                              **options))

    def list_executions(self, job_id: str, *, limit: int | None = None,
                        cursor: str | None = None) -> Page:
        return self._run(self.client.list_executions(job_id, limit=limit, cursor=cursor))

    def get_execution(self, execution_id: str) -> Execution:
        return self._run(self.client.get_execution(execution_id))

    def wait_execution(self, execution_id: str, *, interval: float = 0.5,
                       timeout: float | None = None) -> Execution:
        return self._run(self.client.wait_execution(execution_id, interval=interval,
                                                    timeout=timeout))

    def wait_first_execution(self, job_id: str, *, interval: float = 0.5,
                             timeout: float | None = None) -> Execution:
        return self._run(self.client.wait_first_execution(job_id, interval=interval,
                                                          timeout=timeout))

    def create_workflow(self, workflow: Workflow | Mapping[str, Any], *,
                        idempotency_key: str | None = None) -> StoredWorkflow:
        return self._run(self.client.create_workflow(workflow, idempotency_key=idempotency_key))

    def list_workflows(self, *, state: str | None = None, name: str | None = None,
                       labels: Mapping[str, str] | None = None, limit: int | None = None,
                       cursor: str | None = None) -> Page:
        return self._run(self.client.list_workflows(state=state, name=name, labels=labels,
                                                    limit=limit, cursor=cursor))

    def get_workflow(self, workflow_id: str) -> StoredWorkflow:
        return self._run(self.client.get_workflow(workflow_id))

    def update_workflow(self, workflow_id: str, changes: Mapping[str, Any]) -> StoredWorkflow:
        return self._run(self.client.update_workflow(workflow_id, changes))

    def cancel_workflow(self, workflow_id: str) -> StoredWorkflow:
        return self._run(self.client.cancel_workflow(workflow_id))

    def pause_workflow(self, workflow_id: str) -> StoredWorkflow:
        return self._run(self.client.pause_workflow(workflow_id))

    def resume_workflow(self, workflow_id: str) -> StoredWorkflow:
        return self._run(self.client.resume_workflow(workflow_id))

    def start_run(self, workflow_id: str,
                  input: Mapping[str, Any] | None = None) -> WorkflowRun:
        return self._run(self.client.start_run(workflow_id, input))

    def list_runs(self, workflow_id: str, *, limit: int | None = None,
                  cursor: str | None = None) -> Page:
        return self._run(self.client.list_runs(workflow_id, limit=limit, cursor=cursor))

    def get_run(self, run_id: str) -> WorkflowRun:
        return self._run(self.client.get_run(run_id))

    def cancel_run(self, run_id: str) -> WorkflowRun:
        return self._run(self.client.cancel_run(run_id))

    def retry_run(self, run_id: str) -> WorkflowRun:
        return self._run(self.client.retry_run(run_id))

    def wait_run(self, run_id: str, *, interval: float = 0.5,
                 timeout: float | None = None) -> WorkflowRun:
        return self._run(self.client.wait_run(run_id, interval=interval, timeout=timeout))

    def preview_schedule(self, schedule: str, timezone: str = "UTC", *,
                         start: datetime | str | None = None,
                         count: int | None = None, job_id: str | None = None,
                         seed: str | None = None) -> list[FireTime]:
        return self._run(self.client.preview_schedule(schedule, timezone, start=start,
                                                      count=count, job_id=job_id, seed=seed))

    def list_dead(self, *, job_id: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Page:
        return self._run(self.client.list_dead(job_id=job_id, limit=limit, cursor=cursor))

    def retry_execution(self, execution_id: str) -> Execution:
        return self._run(self.client.retry_execution(execution_id))

    def cluster(self) -> ClusterStatus:
        return self._run(self.client.cluster())

    def ready(self) -> dict[str, Any]:
        return self._run(self.client.ready())
