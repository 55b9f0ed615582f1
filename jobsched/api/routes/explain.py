"""``GET /api/v1/jobs/{id}/explain``: why a job did or did not run, and when it runs next:
its next fire and why, its recent fires not run as planned with their reasons, whether
any worker is alive, and the depth of its priority band's queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from jobsched.api.context import CLUSTER, json_response, read, uuid_param
from jobsched.api.models import ExplainOut, NextFireOut, QueueOut, WorkersOut
from jobsched.api.openapi import Operation
from jobsched.api.routes.executions import execution_out
from jobsched.api.security import principal
from jobsched.domain.explain import is_notable, job_band, next_fire, summary
from jobsched.domain.states import JobState

#: How many notable executions are shown, and how many of the latest are looked through.
RECENT = 20
SCANNED = 500


def _workers(part: Any) -> WorkersOut:
    if isinstance(part, dict):  # {"error": ...}
        return WorkersOut(alive=None, instances=[], error=str(part.get("error")))
    return WorkersOut(alive=len(part), instances=[w["instance"] for w in part])


def _queue(part: Any, band: str) -> QueueOut:
    if part is None or "error" in part:
        error = "no cluster view" if part is None else str(part["error"])
        return QueueOut(priority=band, depth=None, error=error)  # type: ignore[arg-type]
    return QueueOut(priority=band, depth=part["by_priority"].get(band))  # type: ignore[arg-type]


async def explain_job(request: web.Request) -> web.Response:
    job_id, namespace = uuid_param(request), principal(request).namespace
    job = await read(request, lambda jobs: jobs.get_job(job_id, namespace),
                     confirm_missing=True)
    if job is None:
        raise web.HTTPNotFound()
    rows = await read(request, lambda jobs: jobs.list_executions(job_id, after=None,
                                                                 limit=SCANNED))
    recent = [r for r in rows if is_notable(r)][:RECENT]
    view = request.app.get(CLUSTER)
    if view is None:
        workers_part: Any = {"error": "no cluster view"}
        queues_part: Any = None
    else:
        workers_part, queues_part = await view.workers_and_queues()
    band = job_band(job)
    workers, queue = _workers(workers_part), _queue(queues_part, band)
    fire = next_fire(job, datetime.now(UTC))
    return json_response(ExplainOut(
        job_id=job["id"], state=job["state"],
        next_fire=NextFireOut(at=fire.at, reason=fire.reason, detail=fire.detail),
        paused_since=job["updated_at"] if job["state"] == JobState.PAUSED else None,
        run_count=job["run_count"], max_runs=job["max_runs"], start_at=job["start_at"],
        end_at=job["end_at"],
        recent=[execution_out(r) for r in recent],
        workers=workers, queue=queue,
        summary=summary(job, fire, workers.alive, queue.depth, recent),
    ))


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/v1/jobs/{id}/explain", explain_job,
              "Why a job did or did not run: its next fire and why, recent fires not run "
              "as planned with their reasons, live workers, its band's queue depth",
              "read", ok={200: ExplainOut}, errors=(404,)),
)
