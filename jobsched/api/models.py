"""The HTTP API's request and response bodies, declared once: they validate requests, shape
responses, and produce the problem+json errors and the OpenAPI document."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from jobsched.domain.priority import Priority
from jobsched.domain.schedule import ScheduleError, parse_schedule
from jobsched.domain.states import AttemptOutcome, ExecutionState, JobState
from jobsched.domain.workflows import (
    GraphError,
    NodeState,
    RunState,
    TriggerRule,
    WorkflowState,
    build_graph,
)

MAX_ARGV = 256
MAX_LABELS = 32

# What a name or label may not contain: C0 and C1 control characters (a terminal escape
# starts with one) and the characters that reorder text on display (bidirectional
# formatting U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069, and the line and
# paragraph separators U+2028-U+2029), so a name shows as what it is, everywhere.
UNSAFE_TEXT = r"\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
UNSAFE_TEXT_RE = re.compile(f"[{UNSAFE_TEXT}]")


def _displayable(value: Any) -> Any:
    """Named reason for the pattern below (pydantic would only say which pattern)."""
    if isinstance(value, str) and UNSAFE_TEXT_RE.search(value):
        raise ValueError("must not contain control characters or bidirectional formatting "
                         "characters")
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=f"^[^{UNSAFE_TEXT}]+$"), BeforeValidator(_displayable)]
ShortText = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00]*$")]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.\-/]+$")]
LabelValue = Annotated[str, StringConstraints(max_length=200, pattern=f"^[^{UNSAFE_TEXT}]*$"), BeforeValidator(_displayable)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")]
HeaderValue = Annotated[str, StringConstraints(max_length=8192, pattern=r"^[^\x00\r\n]*$")]
SecretName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
FUNCTION_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _within_utc_range(value: datetime) -> datetime:
    """Times are stored and computed in UTC: one that has no UTC reading (year 9999 with a
    negative offset, year 1 with a positive one) is refused here, not by the database."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between 0001-01-01 and 9999-12-31 in UTC") from None
    return value


Moment = Annotated[AwareDatetime, AfterValidator(_within_utc_range)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SecretRef(_Strict):
    """A value the worker looks up when it runs the job: only this name is stored."""

    secret: SecretName


# Tags of the "plain value or secret reference" unions; problem+json leaves them out of
# field paths (problems.py), so an error names "shell.env.TOKEN", not "...TOKEN.<value>".
VALUE_TAG = "<value>"
SECRET_TAG = "<secret>"
UNION_TAGS = frozenset({VALUE_TAG, SECRET_TAG})


def _value_or_secret(value: Any) -> str:
    return SECRET_TAG if isinstance(value, dict | SecretRef) else VALUE_TAG


EnvValue = Annotated[
    Annotated[ShortText, Tag(VALUE_TAG)] | Annotated[SecretRef, Tag(SECRET_TAG)],
    Discriminator(_value_or_secret),
]
HeaderValueOrSecret = Annotated[
    Annotated[HeaderValue, Tag(VALUE_TAG)] | Annotated[SecretRef, Tag(SECRET_TAG)],
    Discriminator(_value_or_secret),
]


class ShellSpec(_Strict):
    argv: Annotated[list[ShortText], Field(min_length=1, max_length=MAX_ARGV)]
    env: Annotated[dict[EnvName, EnvValue], Field(max_length=256, default_factory=dict)]
    cwd: Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")] | None = None


class HttpSpec(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: Annotated[str, StringConstraints(max_length=8192, pattern=r"^https?://[^\s\x00-\x1f/$.?#][^\s\x00-\x1f]*$")]
    headers: Annotated[dict[HeaderName, HeaderValueOrSecret],
                       Field(max_length=100, default_factory=dict)]
    body: Annotated[str, StringConstraints(max_length=262_144, pattern=r"^[^\x00]*$")] | None = None


class PythonSpec(_Strict):
    function: Annotated[str, StringConstraints(max_length=500)]
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("function")
    @classmethod
    def _function_path(cls, value: str) -> str:
        if not FUNCTION_RE.match(value):
            raise ValueError("must be 'module.path:function'")
        return value

    @field_validator("args")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = unstorable_json(value)
        if problem:
            raise ValueError(problem)
        return value


MAX_JSON_DEPTH = 32
_PG_INTEGER = 2**63 - 1


def unstorable_json(value: Any, depth: int = 0) -> str | None:
    """Why PostgreSQL's jsonb would refuse (or mangle) this value, or None: a NUL in a
    string, nesting deeper than MAX_JSON_DEPTH, or a number it cannot hold."""
    if depth > MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return "must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if abs(value) <= _PG_INTEGER else "number too large"
    if isinstance(value, float):
        return None if value == value and abs(value) != float("inf") else "number out of range"
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return "must not contain NUL characters"
        problem = unstorable_json(item, depth + 1)
        if problem:
            return problem
    return None


#: A job document's own nesting (job, payload, args) above its python args' limit: a
#: merge patch nested deeper cannot make a valid job, and is refused before it is merged.
MAX_DOCUMENT_DEPTH = MAX_JSON_DEPTH + 8


def too_deep(value: Any, limit: int = MAX_DOCUMENT_DEPTH) -> str | None:
    """The path of the first object or list nested more than ``limit`` levels deep in a
    parsed JSON value, or None. Iterative: nesting that would exhaust Python's recursion
    (orjson parses 1024 levels) costs one loop step per level here."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        children = (item.items() if isinstance(item, dict)
                    else enumerate(item) if isinstance(item, list) else ())
        for key, child in children:
            if not isinstance(child, dict | list):
                continue
            child_path = f"{path}[{key}]" if isinstance(key, int) else (
                f"{path}.{key}" if path else str(key))
            if depth + 1 > limit:
                return child_path
            stack.append((child, child_path, depth + 1))
    return None


class RetrySpec(_Strict):
    # Frozen (hashable), so pydantic uses the shared default as it is instead of deep
    # copying it for every job that leaves it out.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 1
    backoff_s: Annotated[float, Field(ge=0, le=86_400)] = 2.0
    max_backoff_s: Annotated[float, Field(ge=0, le=86_400)] = 300.0


class HistorySpec(_Strict):
    """How many finished executions of the job to keep (oldest purged first); unset keeps
    them for the global retention period."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)  # as RetrySpec

    succeeded: Annotated[int, Field(ge=0, le=100_000)] | None = None
    failed: Annotated[int, Field(ge=0, le=100_000)] | None = None


class JobCreate(_Strict):
    """A job as submitted. Fields not listed here are rejected until they take effect."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"name": "nightly-report", "schedule": "0 9 * * *", "timezone": "Europe/Berlin",
         "kind": "python", "python": {"function": "myapp.tasks:send_report",
                                      "args": {"team": "billing"}},
         "retry": {"max_attempts": 3, "backoff_s": 2, "max_backoff_s": 300},
         "labels": {"team": "billing"}},
        {"name": "ping", "schedule": "@every 30s", "kind": "http",
         "http": {"method": "POST", "url": "https://example.com/hook",
                  "headers": {"Authorization": {"secret": "HOOK_TOKEN"}}}},
    ]})

    name: Name
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    kind: Literal["shell", "http", "python"]
    shell: ShellSpec | None = None
    http: HttpSpec | None = None
    python: PythonSpec | None = None
    timeout_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    retry: RetrySpec = RetrySpec()
    # default_factory: a fresh dict per job is cheaper than pydantic's deep copy of a {}.
    labels: Annotated[dict[LabelKey, LabelValue],
                      Field(max_length=MAX_LABELS, default_factory=dict)]
    misfire: Literal["run_once", "run_all", "skip"] = "run_once"
    max_catchup: Annotated[int, Field(ge=1, le=1000)] = 10
    starting_deadline_s: Annotated[float, Field(gt=0, le=31 * 86_400)] | None = None
    concurrency: Literal["allow", "forbid", "replace"] = "allow"
    # high work starts before normal and low; low keeps a share (never starves)
    priority: Literal["high", "normal", "low"] = "normal"
    start_at: Moment | None = None
    end_at: Moment | None = None
    max_runs: Annotated[int, Field(ge=1, le=2_147_483_647)] | None = None
    jitter_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    history: HistorySpec = HistorySpec()

    @model_validator(mode="after")
    def _one_payload_matching_kind(self) -> JobCreate:
        given = [k for k in ("shell", "http", "python") if getattr(self, k) is not None]
        if given != [self.kind]:
            raise PayloadMismatch(self.kind, given)
        return self

    @model_validator(mode="after")
    def _schedule_parses(self) -> JobCreate:
        try:
            parse_schedule(self.schedule, self.timezone)
        except ScheduleError as exc:
            raise FieldProblem(getattr(exc, "field", "schedule"), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _bounds_in_order(self) -> JobCreate:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise FieldProblem("end_at", "must be after start_at")
        return self

    def payload(self) -> dict[str, Any]:
        spec = getattr(self, self.kind)
        assert spec is not None
        return spec.model_dump(mode="json")


class FieldProblem(ValueError):
    """A cross-field validation error that belongs to one named field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class PayloadMismatch(FieldProblem):
    def __init__(self, kind: str, given: list[str]) -> None:
        if not given:
            reason = f"kind '{kind}' needs a '{kind}' object"
            field = kind
        else:
            extra = [g for g in given if g != kind]
            field = extra[0] if extra else kind
            reason = f"only '{kind}' may be given for kind '{kind}'"
        super().__init__(field, reason)


class AttemptOut(BaseModel):
    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome | None
    exit_code: int | None
    error: str | None
    # While the attempt runs (finished_at null), its output so far: a python or shell
    # run's worker writes it every output_flush_s; the recorded result replaces it.
    output: str | None


class ExecutionOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    scheduled_for: datetime
    state: ExecutionState
    priority: Priority = Priority.NORMAL
    reason: str | None = None
    attempt: int
    worker: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None
    output: str | None
    # A run triggered with arguments: those merged over the python job's own args.
    args: dict[str, Any] | None = None
    # A workflow node's execution: its run, and its return value (JSON).
    workflow_run_id: uuid.UUID | None = None
    result: Any = None
    attempts: list[AttemptOut] | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _band(cls, value: Any) -> Any:
        """Stored as its rank (0 high, 1 normal, 2 low)."""
        return Priority.from_rank(value) if isinstance(value, int) else value


class TriggerRun(_Strict):
    """The optional body of ``POST /api/v1/jobs/{id}/trigger``: this run's keyword
    arguments of a python job, merged over the job's own (the job is not changed)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"args": {"team": "ops"}}]})

    args: dict[str, Any] | None = None

    @field_validator("args")
    @classmethod
    def _storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = unstorable_json(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # the submitted spec is echoed back as given

    id: uuid.UUID
    namespace: str
    state: JobState
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_execution: ExecutionOut | None


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ExecutionList(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None


class SchedulePreviewRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"schedule": "30 2 * * *", "timezone": "Europe/Berlin", "count": 3}]})

    schedule: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    start: Moment | None = None
    count: Annotated[int, Field(ge=1, le=100)] = 10
    # Whose hashed values (H) to show: a job's id (the job need not exist: the id is only
    # the seed), or any text as the seed.
    job_id: uuid.UUID | None = None
    seed: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    def seed_bytes(self) -> bytes | None:
        if self.job_id is not None:
            return self.job_id.bytes
        return self.seed.encode() if self.seed is not None else None

    @model_validator(mode="after")
    def _schedule_parses(self) -> SchedulePreviewRequest:
        if self.job_id is not None and self.seed is not None:
            raise FieldProblem("seed", "give job_id or seed, not both")
        try:
            schedule = parse_schedule(self.schedule, self.timezone, self.seed_bytes())
        except ScheduleError as exc:
            raise FieldProblem(getattr(exc, "field", "schedule"), str(exc)) from None
        if schedule.needs_seed:
            raise FieldProblem(
                "job_id",
                "the schedule has hashed values (H), which differ from job to job: give "
                "the job's job_id (or a seed) to preview its fire times",
            )
        return self


class PreviewFire(BaseModel):
    utc: datetime
    local: datetime


class SchedulePreview(BaseModel):
    schedule: str
    timezone: str
    items: list[PreviewFire]


class ListJobsQuery(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    state: JobState | None = None
    name: Name | None = None
    label: list[Annotated[str, StringConstraints(pattern=f"^[A-Za-z0-9_.\\-/]+=[^{UNSAFE_TEXT}]*$"), BeforeValidator(_displayable)]] = []
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


MAX_SECRET_BYTES = 65_536


class SecretValue(_Strict):
    """The body of PUT /api/v1/secrets/{name}: the value, stored sealed, never returned."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"value": "s3cr3t-t0ken"}]})

    value: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SECRET_BYTES, pattern=r"^[^\x00]*$")]

    @field_validator("value")
    @classmethod
    def _bounded_bytes(cls, value: str) -> str:
        if len(value.encode("utf-8", errors="surrogatepass")) > MAX_SECRET_BYTES:
            raise ValueError(f"must be at most {MAX_SECRET_BYTES} bytes of UTF-8")
        return value


class SecretOut(BaseModel):
    """A secret as the API shows it: its name and times, never its value."""

    name: str
    created_at: datetime
    updated_at: datetime


class SecretList(BaseModel):
    items: list[SecretOut]
    next_cursor: str | None


class ListSecretsQuery(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    limit: Annotated[int, Field(ge=1, le=500)] = 100
    cursor: SecretName | None = None


class FieldError(BaseModel):
    field: str
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None


class PageQuery(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class DeadQuery(PageQuery):
    """The dead-letter list: a page, of every job of the namespace or of one."""

    job_id: uuid.UUID | None = None


# --- webhooks (DESIGN.md "Webhooks") ---------------------------------------------------

WebhookEventName = Literal["execution.succeeded", "execution.dead", "execution.cancelled",
                           "job.completed", "workflow_run.succeeded", "workflow_run.failed",
                           "workflow_run.cancelled"]
WebhookUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s\x00-\x1f/$.?#][^\s\x00-\x1f]*$")]


class WebhookCreate(_Strict):
    """A webhook endpoint as submitted (and the whole of which a PATCH is a merge patch)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"url": "https://hooks.example.com/jobsched", "events": ["execution.dead"],
         "labels": {"team": "billing"}, "description": "page the billing on-call"}]})

    url: WebhookUrl
    events: Annotated[list[WebhookEventName], Field(min_length=1, max_length=7)]
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)] = {}
    description: Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")] = ""
    enabled: bool = True

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists an event type twice")
        return value


class WebhookOut(BaseModel):
    id: uuid.UUID
    namespace: str
    url: str
    events: list[str]
    labels: dict[str, str]
    description: str
    enabled: bool
    disabled_reason: str | None
    # Until when the secret that signed before the last rotation still signs too.
    previous_secret_until: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    """The create and rotate-secret answers: the only time the secret is shown."""

    secret: str


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_type: str
    data: dict[str, Any]
    created_at: datetime
    state: Literal["pending", "succeeded", "failed", "exhausted"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    last_answer: str | None
    last_duration_ms: float | None
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveriesQuery(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    state: Literal["pending", "succeeded", "failed", "exhausted"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


# --- workflows ---------------------------------------------------------------------------

#: The largest workflow accepted (and stored within 2 s: docs/workflows.md).
MAX_WORKFLOW_NODES = 10_000
NodeKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
#: Keyword arguments a python node's function is given by the run itself.
RESERVED_NODE_ARGS = ("upstream", "input")


class NodeSpec(_Strict):
    """A node: everything a job has but its name, schedule and schedule policies."""

    key: NodeKey
    # default_factory, not a default: a default value is deep-copied into each of up to
    # 10,000 nodes, which took most of a large workflow's validation time.
    depends_on: Annotated[list[NodeKey], Field(max_length=MAX_WORKFLOW_NODES,
                                               default_factory=list)]
    trigger_rule: Literal["all_success", "all_done", "none_failed", "one_success"] = "all_success"
    kind: Literal["shell", "http", "python"]
    shell: ShellSpec | None = None
    http: HttpSpec | None = None
    python: PythonSpec | None = None
    timeout_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    retry: Annotated[RetrySpec, Field(default_factory=RetrySpec)]
    priority: Literal["high", "normal", "low"] = "normal"
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS,
                                                        default_factory=dict)]

    @model_validator(mode="after")
    def _one_payload_matching_kind(self) -> NodeSpec:
        # One validator for both checks: it runs for each of up to 10,000 nodes.
        given = [k for k in ("shell", "http", "python") if getattr(self, k) is not None]
        if given != [self.kind]:
            raise PayloadMismatch(self.kind, given)
        if self.python is not None:
            for name in RESERVED_NODE_ARGS:
                if name in self.python.args:
                    raise FieldProblem(f"python.args.{name}",
                                       f"'{name}' is passed by the workflow run, not by args")
        return self


class WorkflowCreate(_Strict):
    """A workflow as submitted: a DAG of nodes, run by hand or on a schedule."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"name": "nightly-etl", "schedule": "0 2 * * *", "timezone": "Europe/Berlin",
         "concurrency": "forbid", "labels": {"team": "data"},
         "nodes": [
             {"key": "extract", "kind": "python",
              "python": {"function": "etl:extract", "args": {}}},
             {"key": "transform", "depends_on": ["extract"], "kind": "python",
              "python": {"function": "etl:transform", "args": {}},
              "retry": {"max_attempts": 3}},
             {"key": "notify", "depends_on": ["transform"], "trigger_rule": "all_done",
              "kind": "http", "http": {"method": "POST", "url": "https://example.com/done"}}]},
    ]})

    name: Name
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    misfire: Literal["run_once", "run_all", "skip"] = "run_once"
    max_catchup: Annotated[int, Field(ge=1, le=1000)] = 10
    concurrency: Literal["allow", "forbid", "replace"] = "allow"
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)] = {}
    nodes: Annotated[list[NodeSpec], Field(min_length=1, max_length=MAX_WORKFLOW_NODES)]

    @model_validator(mode="after")
    def _schedule_parses(self) -> WorkflowCreate:
        if self.schedule is None:
            return self
        try:
            parse_schedule(self.schedule, self.timezone)
        except ScheduleError as exc:
            raise FieldProblem(getattr(exc, "field", "schedule"), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _a_dag(self) -> WorkflowCreate:
        try:
            build_graph([n.key for n in self.nodes], [n.depends_on for n in self.nodes])
        except GraphError as exc:
            key = self.nodes[exc.index].key
            raise FieldProblem(f"nodes[{exc.index}].{exc.field}",
                               exc.reason if exc.reason.startswith("cycle")
                               else f"node {key!r}: {exc.reason}") from None
        return self


class RunStart(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"input": {"date": "2026-11-27"}}]})

    input: dict[str, Any] = {}

    @field_validator("input")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = unstorable_json(value)
        if problem:
            raise ValueError(problem)
        return value


class NodeRunOut(BaseModel):
    key: str
    state: NodeState
    execution_id: uuid.UUID | None
    attempt: int | None
    started_at: datetime | None
    finished_at: datetime | None
    depends_on: list[str]
    trigger_rule: TriggerRule
    error: str | None = None


class WorkflowRunOut(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_name: str | None = None
    state: RunState
    reason: str | None = None
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None
    input: dict[str, Any]
    nodes: list[NodeRunOut] | None = None  # left out of lists


class WorkflowOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # the submitted spec is echoed back as given

    id: uuid.UUID
    namespace: str
    state: WorkflowState
    next_fire_at: datetime | None
    version: int
    node_count: int
    created_at: datetime
    updated_at: datetime
    last_run: WorkflowRunOut | None


class WorkflowList(BaseModel):
    items: list[WorkflowOut]
    next_cursor: str | None


class WorkflowRunList(BaseModel):
    items: list[WorkflowRunOut]
    next_cursor: str | None


class ListWorkflowsQuery(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    state: WorkflowState | None = None
    name: Name | None = None
    label: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]+=[^\x00-\x1f]*$")]] = []
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class NextFireOut(BaseModel):
    at: datetime | None
    reason: Literal["due", "overdue", "waiting_for_start_at", "paused", "cancelled",
                    "max_runs_reached", "end_at_passed", "one_shot_fired", "completed"]
    detail: str


class WorkersOut(BaseModel):
    alive: int | None  # None: ZooKeeper could not be asked
    instances: list[str]
    error: str | None = None


class QueueOut(BaseModel):
    priority: Priority
    depth: int | None  # messages waiting in the job's band; None: RabbitMQ not asked
    error: str | None = None


class ExplainOut(BaseModel):
    """``GET /api/v1/jobs/{id}/explain``: why a job runs when it does, or does not."""

    job_id: uuid.UUID
    state: JobState
    next_fire: NextFireOut
    paused_since: datetime | None
    run_count: int
    max_runs: int | None
    start_at: datetime | None
    end_at: datetime | None
    # The latest executions that were missed, skipped, dead or failed, or carry a reason
    # (a coalesced misfire), newest first.
    recent: list[ExecutionOut]
    workers: WorkersOut
    queue: QueueOut
    summary: str
