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
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


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

    def register(self, function: Callable[..., Any], name: str | None = None) -> str:
        key = name or f"{function.__module__}:{function.__qualname__}"
        self._tasks[key] = function
        return key

    def get(self, name: str) -> Callable[..., Any] | None:
        return self._tasks.get(name)

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
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(function: Any = None, *, name: str | None = None) -> Any:
    """Register a function (sync or async) so jobs of kind ``python`` can run it."""

    def register(fn: F) -> F:
        key = registry.register(fn, name)
        fn.__jobsched_task__ = key  # type: ignore[attr-defined]
        return fn

    return register(function) if function is not None else register
