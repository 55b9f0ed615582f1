"""``POST /api/v1/schedules/preview``: the next fire times of a schedule, changing nothing.

Any token may ask, so the work one request may cost is bounded: the fire times are
computed on one thread of their own, not on the event loop that serves every other
request, and at most ``PREVIEWS_WAITING`` previews wait for it; more are answered 503 with
Retry-After at once. The worst expressions found (a fifth weekday of February, which
falls every 28 years) cost 25-40 ms there, and about 2 ms of the event loop's time
(checking the body, writing the answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import ValidationError

from jobsched.api.context import json_response
from jobsched.api.models import PreviewFire, SchedulePreview, SchedulePreviewRequest
from jobsched.api.openapi import Operation
from jobsched.api.problems import invalid, problem
from jobsched.domain.firing import preview_fires
from jobsched.domain.schedule import parse_schedule

T = TypeVar("T")
PREVIEWS_WAITING = 8


class Busy(Exception):
    """Every slot is taken: the caller should come back in a second."""


class OffLoop:
    """Runs CPU-bound calls on one thread of their own, at most ``waiting`` at a time
    (queued or running): the event loop stays free for the other requests, and a caller
    that asks faster than the thread computes is refused instead of queued without end."""

    def __init__(self, name: str, waiting: int) -> None:
        self.waiting = waiting
        self.pending = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, call: Callable[[], T]) -> T:
        if self.pending >= self.waiting:
            raise Busy()
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


PREVIEWS = web.AppKey("previews", OffLoop)


def install_previews(app: web.Application) -> None:
    """The preview thread of this application, stopped with it."""
    app[PREVIEWS] = OffLoop("preview", PREVIEWS_WAITING)

    async def close(app: web.Application) -> None:
        app[PREVIEWS].close()

    app.on_cleanup.append(close)


async def preview_schedule(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        wanted = SchedulePreviewRequest.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid schedule preview")
    try:
        items = await request.app[PREVIEWS].run(lambda: _fires(wanted))
    except Busy:
        return problem(503, "Too many previews at once",
                       f"{PREVIEWS_WAITING} schedule previews are being computed; retry",
                       headers={"Retry-After": "1"})
    return json_response(SchedulePreview(schedule=wanted.schedule, timezone=wanted.timezone,
                                         items=items))


def _fires(wanted: SchedulePreviewRequest) -> list[PreviewFire]:
    """The fires with their wall-clock reading; they stop where either would leave year
    9999 (a fire late on 9999-12-31 UTC may already be year 10000 east of Greenwich)."""
    schedule = parse_schedule(wanted.schedule, wanted.timezone, wanted.seed_bytes())
    zone = ZoneInfo(wanted.timezone)
    items = []
    for fire in preview_fires(schedule, wanted.start or datetime.now(UTC), wanted.count):
        try:
            local = fire.astimezone(zone)
        except OverflowError:
            break
        items.append(PreviewFire(utc=fire, local=local))
    return items


OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/schedules/preview", preview_schedule,
              "The next fire times of a schedule (changes nothing)", "read",
              ok={200: SchedulePreview}, body=SchedulePreviewRequest),
)
