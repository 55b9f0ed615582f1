"""Readiness: each role registers a check per dependency; /readyz reports them all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Check = Callable[[], Awaitable[Any]]

CHECK_TIMEOUT_S = 2.0


class Readiness:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._info: dict[str, Callable[[], Any]] = {}

    def add_check(self, name: str, check: Check) -> None:
        """A check passes by returning (its value is shown) and fails by raising."""
        self._checks[name] = check

    def add_info(self, name: str, describe: Callable[[], Any]) -> None:
        self._info[name] = describe

    async def check(self) -> dict[str, Any]:
        async def run(check: Check) -> dict[str, Any]:
            try:
                value = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return {"ok": False, "error": repr(exc)[:200]}
            return {"ok": True, **({"detail": value} if value is not None else {})}

        names = list(self._checks)
        results = await asyncio.gather(*(run(self._checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        report: dict[str, Any] = {"ready": all(r["ok"] for r in results), "checks": checks}
        for name, describe in self._info.items():
            report[name] = describe()
        return report


def health_app(readiness: Readiness) -> web.Application:
    """The small HTTP server of roles that have no API of their own."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        report = await readiness.check()
        return web.json_response(report, status=200 if report["ready"] else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
