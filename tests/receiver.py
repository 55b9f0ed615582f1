"""A real webhook receiver for the tests: an aiohttp server on 127.0.0.1 that verifies each
delivery's signature with the ``standardwebhooks`` library (as a user's receiver would) and
answers what the test scripts (a status per call, or a hang)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from jobsched_dev.processes import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived
    verified_with: list[str]  # the secrets (of Receiver.secrets) whose signature matched

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """``answers``: statuses for the first calls, in order, then ``default``; a status of 0
    hangs the call until ``release`` is set (a receiver that never answers)."""

    secrets: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    default: int = 200
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answer_for: Callable[[Received], int] | None = None
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified.append(secret)
            except WebhookVerificationError:
                pass
        item = Received(request.path, headers, body, time.time(), verified)
        async with self._arrived:
            self.received.append(item)
            self._arrived.notify_all()
        if self.answer_for is not None:
            status = self.answer_for(item)
        else:
            status = self.answers.pop(0) if self.answers else self.default
        if status == 0:
            await self.release.wait()
            status = 200
        return web.Response(status=status, text=f"answered {status}")

    async def wait_for(self, count: int, timeout: float = 20,
                       where: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        """The first ``count`` deliveries matching ``where``, once they have arrived."""
        async def arrived() -> list[Received]:
            async with self._arrived:
                await self._arrived.wait_for(
                    lambda: len([r for r in self.received if where(r)]) >= count)
                return [r for r in self.received if where(r)][:count]

        try:
            return await asyncio.wait_for(arrived(), timeout)
        except TimeoutError:
            got = [(r.path, r.json.get("type")) for r in self.received]
            raise AssertionError(f"{count} deliveries expected in {timeout}s, got {got}") \
                from None

    def event_ids(self, items: Iterable[Received] | None = None) -> list[str]:
        return [r.event_id for r in (self.received if items is None else items)]
