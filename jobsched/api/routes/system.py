"""The cluster view, the OpenAPI document, liveness and readiness."""

from __future__ import annotations

import orjson
from aiohttp import web

from jobsched.api.context import CLUSTER, OPENAPI, READINESS
from jobsched.api.openapi import Operation
from jobsched.api.problems import problem


async def cluster_status(request: web.Request) -> web.Response:
    view = request.app.get(CLUSTER)
    if view is None:
        return problem(503, "Cluster view unavailable", "this api has no cluster view")
    return web.Response(body=orjson.dumps(await view.describe()),
                        content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS].check()
    return web.Response(
        status=200 if report["ready"] else 503,
        body=orjson.dumps(report),
        content_type="application/json",
    )


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/v1/cluster", cluster_status,
              "Leader, schedulers, live workers and queue depths", "read"),
    Operation("GET", "/api/v1/openapi.json", openapi_document, "This document", "read"),
    Operation("GET", "/healthz", healthz, "Liveness", None),
    Operation("GET", "/readyz", readyz, "Readiness of each dependency (503 if not ready)",
              None, ok={200: None, 503: None}),
)
