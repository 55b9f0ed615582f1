"""The child process of a task registered with ``@task(isolation="process")``.

Run as ``python -m jobsched.worker.child`` by the worker, which writes one JSON request on
its stdin: ``sys_path`` (the worker's, so ``--import`` modules are found the same way),
``module`` (where the function is defined), ``name`` (its registry key), ``kwargs`` and
``context`` (a ``TaskContext`` as JSON, or null). The answer is one JSON object on stdout:
``{"value": …}`` (JSON), ``{"repr": "…"}`` (a value that is not JSON) or
``{"error": "Type: message"}``. Whatever the function prints to stdout goes to stderr, so
it cannot be taken for the answer; the worker reads stderr into the run's output, with the
function's log records (at ``log_level``, the worker's, and up) and its traceback."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
import time
import traceback
import uuid
from datetime import datetime
from typing import Any

import orjson

#: How a log record emitted by a task's code reads in its run's output (here and in
#: jobsched.worker.capture, for functions run in the worker).
LOG_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def traceback_text(exc: BaseException, skip: int = 0) -> str:
    """The exception's traceback as Python prints it, less its first ``skip`` frames (the
    worker's own frames that called the task's function)."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    sys.path[:] = request["sys_path"]
    from jobsched.tasks import TaskContext, registry

    importlib.import_module(request["module"])
    function = registry.get(request["name"])
    if function is None:
        return {"error": f"function {request['name']!r} is not registered once "
                         f"{request['module']!r} is imported in a child process"}
    kwargs = dict(request["kwargs"])
    context = request.get("context")
    if context is not None:
        kwargs["context"] = TaskContext(uuid.UUID(context["execution_id"]),
                                        context["attempt"], uuid.UUID(context["job_id"]),
                                        datetime.fromisoformat(context["scheduled_for"]))
    try:
        if inspect.iscoroutinefunction(function):
            value = asyncio.run(function(**kwargs))
        else:
            value = function(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the task's failure is the answer
        sys.stderr.write(traceback_text(exc, skip=1))
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        orjson.dumps(value)
    except TypeError:
        return {"repr": repr(value)}
    return {"value": value}


def _log_to_stderr(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main() -> int:
    request = orjson.loads(sys.stdin.buffer.read())
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the function's prints go to stderr, not into the answer
    sys.stdout = sys.stderr
    _log_to_stderr(int(request.get("log_level") or logging.INFO))
    try:
        reply = _answer(request)
    except Exception as exc:  # noqa: BLE001 - e.g. the module fails to import here
        reply = {"error": f"in the task's child process: {type(exc).__name__}: {exc}"}
    answer.write(orjson.dumps(reply))
    answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
