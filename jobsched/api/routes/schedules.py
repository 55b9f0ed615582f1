"""``POST /api/v1/schedules/preview``: the next fire times of a schedule, changing nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import ValidationError

from jobsched.api.context import json_response
from jobsched.api.models import PreviewFire, SchedulePreview, SchedulePreviewRequest
from jobsched.api.openapi import Operation
from jobsched.api.problems import invalid
from jobsched.domain.firing import preview_fires
from jobsched.domain.schedule import parse_schedule


async def preview_schedule(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        wanted = SchedulePreviewRequest.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc, "Invalid schedule preview")
    schedule = parse_schedule(wanted.schedule, wanted.timezone, wanted.seed_bytes())
    zone = ZoneInfo(wanted.timezone)
    fires = preview_fires(schedule, wanted.start or datetime.now(UTC), wanted.count)
    return json_response(SchedulePreview(
        schedule=wanted.schedule, timezone=wanted.timezone,
        items=[PreviewFire(utc=f, local=f.astimezone(zone)) for f in fires],
    ))


OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/schedules/preview", preview_schedule,
              "The next fire times of a schedule (changes nothing)", "read",
              ok={200: SchedulePreview}, body=SchedulePreviewRequest),
)
