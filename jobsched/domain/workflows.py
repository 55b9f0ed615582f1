"""Workflows as pure logic: the shape of a DAG (unique keys, known parents, no cycle, named
by its path), the four trigger rules, and the states of nodes and runs.

The database applies the same rules (``workflow_decide`` in migrations/012_workflows.sql)
in the transaction that records a parent's result; a test holds the two to the same
answers for every small combination of parent outcomes.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from jobsched.domain.firing import FORBID_REASON, FireRecord
from jobsched.domain.priority import Priority
from jobsched.domain.states import ExecutionState


class WorkflowState(StrEnum):
    """A workflow ``active`` fires on its schedule (if it has one) and can be started by
    hand; ``paused`` only by hand; ``cancelled`` not at all (its running runs were
    cancelled with it)."""

    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


#: A node's priority as stored in its job row's ``priority`` column: the band's rank.
PRIORITY_RANKS = {band.value: band.rank for band in Priority}


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    NONE_FAILED = "none_failed"
    ONE_SUCCESS = "one_success"


class NodeState(StrEnum):
    """``pending`` until its trigger rule decides; ``queued`` and ``running`` while its
    execution is active; then how it ended. ``upstream_failed`` and ``skipped`` nodes never
    had an execution in this run."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


#: Nodes that are over for this run (a retry of the run may reset some of them).
FINISHED_NODE_STATES = frozenset({NodeState.SUCCEEDED, NodeState.FAILED,
                                  NodeState.UPSTREAM_FAILED, NodeState.SKIPPED,
                                  NodeState.CANCELLED})
#: What a retry of a run runs again (with every node downstream of them).
RETRIED_NODE_STATES = frozenset({NodeState.FAILED, NodeState.UPSTREAM_FAILED,
                                 NodeState.CANCELLED})


class RunState(StrEnum):
    """A run is ``running`` until every node finished: then ``succeeded``, or ``failed``
    if a node failed or is upstream_failed; or ``cancelled``. A scheduled fire that the
    workflow's policies did not run is recorded as a run ``skipped`` (concurrency=forbid)
    or ``missed`` (misfire), with its reason and no node, as a job's fire is."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MISSED = "missed"


FINISHED_RUN_STATES = frozenset(set(RunState) - {RunState.RUNNING})


class Decision(StrEnum):
    """What a pending node's trigger rule says, given its parents so far."""

    WAIT = "wait"
    RUN = "run"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ParentCounts:
    """A node's parents by outcome. ``failed`` counts failed and upstream_failed parents
    (and cancelled ones, which only a cancelled run has); ``done`` counts every finished
    parent, whatever the outcome."""

    parents: int
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


def decide(rule: TriggerRule | str, counts: ParentCounts) -> Decision:
    """The trigger rule of DESIGN.md "Workflows", as a pure function. A node decides as
    soon as its outcome is certain: all_success ends at the first failed (or skipped)
    parent, one_success runs at the first success, without waiting for the others."""
    rule = TriggerRule(rule)
    everyone_done = counts.done >= counts.parents
    if rule == TriggerRule.ALL_SUCCESS:
        if counts.failed:
            return Decision.UPSTREAM_FAILED
        if counts.skipped:
            return Decision.SKIPPED
        return Decision.RUN if counts.succeeded >= counts.parents else Decision.WAIT
    if rule == TriggerRule.ALL_DONE:
        return Decision.RUN if everyone_done else Decision.WAIT
    if rule == TriggerRule.NONE_FAILED:
        if counts.failed:
            return Decision.UPSTREAM_FAILED
        return Decision.RUN if everyone_done else Decision.WAIT
    # one_success; a root node (no parent) runs at once under every rule
    if counts.succeeded or counts.parents == 0:
        return Decision.RUN
    return Decision.UPSTREAM_FAILED if everyone_done else Decision.WAIT


def node_outcome(state: ExecutionState | str) -> NodeState | None:
    """How a node ends when its execution ends in ``state`` (None: not ended). An
    execution is ``dead`` once its retries are exhausted: the node ``failed``."""
    state = ExecutionState(state)
    if state == ExecutionState.SUCCEEDED:
        return NodeState.SUCCEEDED
    if state in (ExecutionState.DEAD, ExecutionState.FAILED, ExecutionState.TIMED_OUT):
        return NodeState.FAILED
    if state == ExecutionState.CANCELLED:
        return NodeState.CANCELLED
    if state in (ExecutionState.SKIPPED, ExecutionState.MISSED):
        return NodeState.SKIPPED
    return None


def run_outcome(node_states: Iterable[NodeState | str]) -> RunState:
    """The state of a run from its nodes' states (every one finished)."""
    states = set(map(NodeState, node_states))
    if NodeState.CANCELLED in states:
        return RunState.CANCELLED
    if states & {NodeState.FAILED, NodeState.UPSTREAM_FAILED}:
        return RunState.FAILED
    return RunState.SUCCEEDED


def one_run_at_a_time(fires: Sequence[FireRecord],
                      concurrency: Mapping[uuid.UUID, str]) -> list[FireRecord]:
    """The fires of a leader's tick for workflows: a ``forbid`` or ``replace`` workflow
    starts at most one run per tick. (A job's overlapping runs are held apart by its lock
    on the workers; a workflow run has no single worker.) forbid keeps the first fire and
    records the later ones skipped; replace keeps the last and records the earlier ones
    skipped, replaced before they started."""
    queued: dict[uuid.UUID, list[int]] = {}
    for index, fire in enumerate(fires):
        if fire.state == ExecutionState.QUEUED and concurrency.get(fire.job_id) in (
                "forbid", "replace"):
            queued.setdefault(fire.job_id, []).append(index)
    out = list(fires)
    for workflow_id, indexes in queued.items():
        forbid = concurrency[workflow_id] == "forbid"
        dropped = indexes[1:] if forbid else indexes[:-1]
        reason = (FORBID_REASON if forbid
                  else "replaced by a newer fire before it started (concurrency=replace)")
        for index in dropped:
            out[index] = dataclasses.replace(out[index], state=ExecutionState.SKIPPED,
                                             reason=reason)
    return out


# --- the graph ---------------------------------------------------------------------------


class GraphError(ValueError):
    """A workflow's nodes do not form a DAG. ``index`` is the node the problem is reported
    on (its position in ``nodes``), ``field`` the field of that node."""

    def __init__(self, index: int, field: str, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes by position: each one's parents and children (positions), and an order in
    which every parent comes before its children."""

    keys: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]

    @property
    def roots(self) -> list[int]:
        return [i for i, p in enumerate(self.parents) if not p]

    def descendants(self, start: Iterable[int]) -> set[int]:
        """Every node reachable from ``start`` through children (``start`` included)."""
        seen = set(start)
        stack = list(seen)
        while stack:
            for child in self.children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen


def build_graph(keys: Sequence[str], depends_on: Sequence[Sequence[str]]) -> Graph:
    """Check and index a workflow's nodes: keys unique, every dependency a key of the same
    workflow (listed once, not the node itself), no cycle. A cycle is reported on its
    first node, naming its path (``a → b → c → a``)."""
    position: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in position:
            raise GraphError(index, "key", f"duplicate key {key!r} (also node "
                                           f"{position[key]})")
        position[key] = index
    parents: list[tuple[int, ...]] = []
    children: list[list[int]] = [[] for _ in keys]
    for index, needs in enumerate(depends_on):
        seen: set[str] = set()
        mine: list[int] = []
        for parent in needs:
            if parent in seen:
                raise GraphError(index, "depends_on", f"{parent!r} is listed twice")
            seen.add(parent)
            if parent == keys[index]:
                raise GraphError(index, "depends_on",
                                 f"cycle: {keys[index]} → {keys[index]}")
            if parent not in position:
                raise GraphError(index, "depends_on", f"unknown key {parent!r}")
            mine.append(position[parent])
            children[position[parent]].append(index)
        parents.append(tuple(mine))
    order = _topological_order(keys, parents, children)
    return Graph(tuple(keys), tuple(parents), tuple(tuple(c) for c in children), order)


def _topological_order(keys: Sequence[str], parents: Sequence[Sequence[int]],
                       children: Sequence[Sequence[int]]) -> tuple[int, ...]:
    waiting = [len(p) for p in parents]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order: list[int] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) == len(keys):
        return tuple(order)
    cycle = _find_cycle(parents, {i for i, n in enumerate(waiting) if n})
    # Told from its earliest node, so the same cycle is always named the same way.
    first = cycle.index(min(cycle))
    ring = [*cycle[first:], *cycle[:first]]
    path = " → ".join(keys[i] for i in [*ring, ring[0]])
    raise GraphError(ring[0], "depends_on", f"cycle: {path}")


def _find_cycle(parents: Sequence[Sequence[int]], stuck: set[int]) -> list[int]:
    """A cycle among the nodes Kahn's algorithm could not order (each of them waits on
    one of the others): its nodes in dependency order, each a parent of the next and the
    last a parent of the first."""
    start = min(stuck)
    seen: dict[int, int] = {}
    walk: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = next(p for p in parents[node] if p in stuck)
    loop = walk[seen[node]:]
    loop.reverse()  # parent → child, the order in which they would run
    return loop
