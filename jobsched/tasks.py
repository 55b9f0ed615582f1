"""Python tasks: functions registered with ``@task`` on the workers, named ``module:function``.

Only registered functions run: a job cannot name an arbitrary importable callable.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

#: Where a plain function runs: on one of the worker's threads (cheap; a thread cannot be
#: stopped, so a cancel or timeout abandons it) or in a child process of its own (a process
#: start per run; a cancel or timeout kills it).
Isolation = Literal["thread", "process"]
ISOLATIONS: tuple[Isolation, ...] = ("thread", "process")


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Passed to a task that declares a ``context`` parameter: ``(execution_id, attempt)``
    is the idempotency key of a side effect that must not repeat."""

    execution_id: uuid.UUID
    attempt: int
    job_id: uuid.UUID
    scheduled_for: datetime


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Callable[..., Any]] = {}
        self._isolation: dict[str, Isolation] = {}
        self._on_thread: dict[str, bool] = {}  # asked once per run: worked out once per task

    def register(self, function: Callable[..., Any], name: str | None = None,
                 isolation: Isolation = "thread") -> str:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, "
                             f"not {isolation!r}")
        key = name or f"{function.__module__}:{function.__qualname__}"
        self._tasks[key] = function
        self._isolation[key] = isolation
        self._on_thread[key] = (isolation == "thread"
                                and not inspect.iscoroutinefunction(function))
        return key

    def get(self, name: str) -> Callable[..., Any] | None:
        return self._tasks.get(name)

    def isolation(self, name: str) -> Isolation:
        """How the task registered as ``name`` runs: ``thread`` unless it asked otherwise."""
        return self._isolation.get(name, "thread")

    def on_thread(self, name: str) -> bool:
        """Whether the task registered as ``name`` is a plain function run on one of the
        worker's task threads (not a coroutine function, not in a child process)."""
        return self._on_thread.get(name, False)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    @staticmethod
    def wants_context(function: Callable[..., Any]) -> bool:
        """Whether the task declares a ``context`` parameter (inspected once per task)."""
        return "context" in TaskRegistry.parameters(function)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def parameters(function: Callable[..., Any]) -> frozenset[str]:
        """The parameters a task declares by name (inspected once per task): a workflow
        node is given ``upstream`` and ``input`` only if it asks for them."""
        try:
            return frozenset(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            return frozenset()


registry = TaskRegistry()


@overload
def task(function: F) -> F: ...
@overload
def task(*, name: str | None = None, isolation: Isolation = "thread") -> Callable[[F], F]: ...


def task(function: Any = None, *, name: str | None = None,
         isolation: Isolation = "thread") -> Any:
    """Register a function (sync or async) so jobs of kind ``python`` can run it.

    ``isolation="process"`` runs each call in a child process of the worker (its module
    imported there afresh, its arguments and result passed as JSON): a cancel or timeout
    kills that process (SIGTERM, then SIGKILL after a grace). By default (``"thread"``) a
    plain function runs on a worker thread, which nothing can stop: a cancel or timeout
    ends the attempt at once but the function runs on, its return value discarded. An
    ``async`` function on the worker's loop (the default for one) is stopped at its next
    ``await``."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, "
                         f"not {isolation!r}")

    def register(fn: F) -> F:
        key = registry.register(fn, name, isolation)
        fn.__jobsched_task__ = key  # type: ignore[attr-defined]
        return fn

    return register(function) if function is not None else register
