"""The web dashboard, served by the api role at ``/`` (static files, no build step)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"


def register_dashboard(app: web.Application) -> None:
    """Serve the dashboard's index at ``/`` and its assets under ``/ui/``."""
    if not (STATIC / "index.html").is_file():
        return

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/ui/", STATIC)
