"""The web dashboard, served by the api role at ``/`` (static files, no build step)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
#: The dashboard's pages may run only its own scripts (no inline script, no eval), load
#: only its own style sheet, talk only to this origin, and be framed by no one (so Run
#: now or Cancel cannot be clickjacked). Trusted Types make any HTML-from-a-string sink a
#: script error: the pages build everything with DOM calls and textContent.
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                 "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                 "form-action 'self'; frame-ancestors 'none'; "
                 "require-trusted-types-for 'script'")


def is_dashboard(path: str) -> bool:
    return path == "/" or path.startswith("/ui/")


def register_dashboard(app: web.Application) -> None:
    """Serve the dashboard's index at ``/`` and its assets under ``/ui/``."""
    if not (STATIC / "index.html").is_file():
        return

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/ui/", STATIC)
