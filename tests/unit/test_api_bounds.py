"""The api's abuse bounds as pure logic: the client address behind trusted proxies, the
failed-authentication limit (no lookup once an address is over it), cursors, nesting
depth, names, the preview's bound, the fire-time shortcut for rare schedules, and the
CLI's terminal-safe printing."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobsched.api.models import JobCreate, too_deep
from jobsched.api.pagination import decode_cursor, encode_cursor
from jobsched.api.routes.schedules import Busy, OffLoop
from jobsched.api.security import client_address, security_middleware, trusted_networks
from jobsched.cli_client import block, json_text, line
from jobsched.domain import schedule as schedule_module
from jobsched.domain.auth import RateLimiter, new_token
from jobsched.domain.firing import preview_fires
from jobsched.domain.schedule import next_fire_after, parse_schedule
from jobsched.settings import Settings, load_settings
from tests.helpers import ROOT

TRUSTED = trusted_networks(["10.0.0.0/8", "127.0.0.1"])


def request_from(peer: str | None, forwarded: list[str] | None = None) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = (
        lambda name, default=None: (peer, 5000) if name == "peername" and peer else default)
    headers = [("X-Forwarded-For", value) for value in forwarded or []]
    return make_mocked_request("GET", "/api/v1/jobs", headers=headers, transport=transport)


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # untrusted peer: its XFF is ignored
    ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),  # the proxy says who connected to it
    ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client's own entries
    ("10.1.2.3", ["198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # two trusted proxies
    ("10.1.2.3", ["198.51.100.1", "10.9.9.9"], "198.51.100.1"),  # the header given twice
    ("10.1.2.3", ["garbage, 10.9.9.9"], "10.9.9.9"),  # no address: stop at the last proxy
    ("10.1.2.3", [], "10.1.2.3"),
    ("127.0.0.1", ["2001:db8:1:2:aaaa::1"], "2001:db8:1:2::/64"),  # IPv6 counts per /64
    ("::ffff:203.0.113.5", [], "203.0.113.5"),
    (None, [], "unknown"),
])
def test_client_address_trusts_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: list[str], client: str
) -> None:
    assert client_address(request_from(peer, forwarded), TRUSTED) == client
    if peer and ":" not in peer:
        assert client_address(request_from(peer, forwarded), ()) == peer


def test_compose_trusts_exactly_its_nginx() -> None:
    """The api believes X-Forwarded-For from nginx's fixed address only, an address no
    other container can be given, and nginx appends the address it was connected from."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    nginx = services["nginx"]["networks"]["default"]["ipv4_address"]
    given = services["api"]["environment"]["JOBSCHED_TRUSTED_PROXIES"]
    trusted = load_settings(environ={"JOBSCHED_TRUSTED_PROXIES": given}).trusted_proxies
    assert trusted == (nginx,)
    pool = compose["networks"]["default"]["ipam"]["config"][0]
    address = ipaddress.ip_address(nginx)
    assert address in ipaddress.ip_network(pool["subnet"])
    assert address not in ipaddress.ip_network(pool["ip_range"])  # not handed out
    conf = (ROOT / "deploy/nginx.conf").read_text(encoding="utf-8")
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;",
                     conf)


@given(st.lists(st.text(max_size=20), max_size=5))
def test_made_up_forwarded_entries_never_mint_new_keys(entries: list[str]) -> None:
    """Whatever a client puts left of the proxy's entry, the key is the proxy's entry."""
    forwarded = ", ".join([*entries, "198.51.100.7"])
    assert client_address(request_from("10.0.0.1", [forwarded]), TRUSTED) == "198.51.100.7"


def test_blocked_for_looks_without_spending_and_keys_are_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
    assert limiter.blocked_for("a", 0.0) == 0
    assert [limiter.retry_after("a", 0.0) for _ in range(3)] == [0, 0, 1]
    assert [limiter.blocked_for("a", 0.0) for _ in range(5)] == [1] * 5  # spends nothing
    assert limiter.blocked_for("a", 1.0) == 0
    for key in ("b", "c", "d"):  # "a" is now the least recently used: dropped
        limiter.retry_after(key, 1.0)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets
    assert RateLimiter(rate=0, burst=1).blocked_for("a", 0.0) == 0


class CountingTokens:
    def __init__(self, token: str, digest: bytes) -> None:
        self.digest = digest
        self.lookups = 0

    async def authenticate(self, digest: bytes) -> dict[str, Any] | None:
        self.lookups += 1
        if digest != self.digest:
            return None
        return {"id": uuid.uuid4(), "namespace": "ns", "role": "viewer", "name": None}


@pytest.fixture
def gate_app() -> Iterator[tuple[web.Application, CountingTokens, str, list[float]]]:
    from jobsched.api.security import Authenticator

    token, digest = new_token()
    tokens = CountingTokens(token, digest)
    now = [100.0]
    settings = Settings(auth_failures_per_s=0.5, auth_failure_burst=3)
    gate = security_middleware(settings, Authenticator(tokens, 5.0, clock=lambda: now[0]),
                               RateLimiter(0, 1), clock=lambda: now[0])

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(middlewares=[gate])
    app.router.add_get("/api/v1/jobs", ok)
    yield app, tokens, token, now


async def test_an_address_over_its_failures_costs_no_lookup(
    gate_app: tuple[web.Application, CountingTokens, str, list[float]]
) -> None:
    app, tokens, token, now = gate_app
    async with TestClient(TestServer(app)) as client:
        async def get(bearer: str) -> int:
            response = await client.get("/api/v1/jobs",
                                        headers={"Authorization": f"Bearer {bearer}"})
            return response.status

        unknown = new_token()[0]
        assert [await get(unknown) for _ in range(3)] == [401, 401, 401]
        assert tokens.lookups == 3
        assert [await get(unknown) for _ in range(50)] == [429] * 50
        assert await get("malformed") == 429
        assert tokens.lookups == 3  # none of the 51 reached the token store
        assert await get(token) == 429  # not looked up yet, so not looked up now
        now[0] += 2.0  # one failure's worth of time later: one more lookup is allowed
        assert await get(token) == 200
        assert tokens.lookups == 4
        assert [await get(unknown), await get(unknown)] == [401, 429]  # the one allowed
        assert await get(token) == 200  # known now: no lookup, however the address fares
        assert tokens.lookups == 5


def test_a_cursor_decodes_only_to_what_encode_wrote() -> None:
    at, row_id = datetime(2026, 3, 1, 12, 0, 0, 123, tzinfo=UTC), uuid.uuid4()
    cursor = encode_cursor(at, row_id)
    assert decode_cursor(cursor) == (at, row_id)
    assert encode_cursor(at.astimezone(), row_id) == cursor  # any offset in, UTC out

    def forged(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    for bad in ("WyIyMDIwLTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwxXQ", cursor + "=", cursor + "A",
                forged(["0001-01-01T00:00:00+01:00", str(row_id)]),
                forged([at.isoformat(), str(row_id).upper()]),
                forged([at.isoformat(), row_id.int]), forged([at.isoformat()]),
                forged({"at": at.isoformat()}), forged(None), forged([None, None])):
        with pytest.raises(web.HTTPBadRequest):
            decode_cursor(bad)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.binary(max_size=150).map(
                     lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
                 st.tuples(st.datetimes(timezones=st.timezones()), st.uuids()).map(
                     lambda p: encode_cursor(*p))))
def test_any_cursor_is_a_position_or_a_400(cursor: str) -> None:
    try:
        found = decode_cursor(cursor)
    except web.HTTPBadRequest:
        return
    assert found is not None and encode_cursor(*found) == cursor
    assert found[0].utcoffset() == timedelta(0)


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(c) for c in children), default=0)
    return 0


json_values = st.recursive(st.none() | st.integers() | st.text(max_size=3),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=40)


@given(json_values, st.integers(1, 6))
def test_too_deep_names_a_path_exactly_when_the_value_is_deeper(value: Any,
                                                                 limit: int) -> None:
    found = too_deep(value, limit)
    assert (found is not None) == (_depth(value) > limit)


def test_too_deep_survives_what_recursion_would_not() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert too_deep({"a": value}) == "a" + "[0]" * 39


UNSAFE = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + [
    "\u061c", "\u200e", "\u200f", "\u2028", "\u2029", "\u202a", "\u202b", "\u202c",
    "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
BASE_JOB = {"name": "x", "schedule": "0 0 * * *", "kind": "python",
            "python": {"function": "a:b"}}


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_names_and_label_values_refuse_every_unsafe_character(char: str) -> None:
    for job in ({**BASE_JOB, "name": f"a{char}b"}, {**BASE_JOB, "labels": {"k": char}}):
        with pytest.raises(ValidationError, match="bidirectional formatting"):
            JobCreate.model_validate_json(json.dumps(job))


@given(st.text(st.characters(blacklist_characters=UNSAFE, blacklist_categories=["Cs"]),
               min_size=1, max_size=50))
def test_other_names_are_accepted(name: str) -> None:
    assert JobCreate.model_validate_json(json.dumps({**BASE_JOB, "name": name})).name == name


TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f"
                             "\u2028-\u202e\u2066-\u2069]")


@given(st.text(max_size=300))
def test_printed_server_text_holds_no_control_or_bidi_character(text: str) -> None:
    assert not TERMINAL_UNSAFE.search(block(text))
    assert not TERMINAL_UNSAFE.search(line(text)) and "\n" not in line(text)
    assert json.loads(json_text({"v": text})) == {"v": text}  # lossless
    assert not TERMINAL_UNSAFE.search(json_text({"v": text}).replace("\n", ""))


@given(st.text(st.characters(blacklist_categories=["Cc", "Cs"],
                             blacklist_characters=UNSAFE), max_size=100))
def test_printable_text_prints_unchanged(text: str) -> None:
    assert line(text) == text and block(text) == text


def test_escape_sequences_are_dropped_whole() -> None:
    assert line("\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m \x9b1Adone") == "red done"
    assert block("progress 10%\rprogress 99%\r\nok\n") == "progress 10%\nprogress 99%\nok\n"
    assert unicodedata.category(line("a\x00b")[1]) == "So"  # U+FFFD marks the spot


def test_the_preview_runs_off_the_loop_and_refuses_beyond_its_bound() -> None:
    async def scenario() -> None:
        runner = OffLoop("test", waiting=2)
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def blocked() -> int:
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return 1

        first = asyncio.ensure_future(runner.run(blocked))
        second = asyncio.ensure_future(runner.run(lambda: 2))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):
            await runner.run(lambda: 3)
        release.set()
        assert await first == 1 and await second == 2
        assert await runner.run(lambda: 4) == 4 and runner.pending == 0
        runner.close()

    asyncio.run(scenario())


RARE = ["0 0 29 2 *", "30 2 29 2 *", "0 0 * 2 1#5", "59 23 31 12 *", "0 3 L 3 *",
        "15 2 * 3 0#5", "0 */12 29 2 *", "*/30 1-3 29 2 *", "0 0 1 1 *", "0 2 * 10 0#4"]
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
         "Pacific/Chatham", "UTC"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RARE), st.sampled_from(ZONES),
       st.datetimes(datetime(2000, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC)))
def test_rare_fires_are_the_same_with_and_without_the_shortcut(
    expression: str, zone: str, start: datetime
) -> None:
    """The shortcut for long spans (_settled) against the walk it skips, day by day."""
    schedule = parse_schedule(expression, zone)
    fast = preview_fires(schedule, start, 6)
    with mock.patch.object(schedule_module, "_settled", lambda *args: False):
        slow = preview_fires(schedule, start, 6)
    assert fast == slow


def test_a_leap_day_preview_asks_the_time_zone_a_few_times_per_fire() -> None:
    schedule = parse_schedule("0 0 29 2 *", "Europe/Berlin")
    calls = []
    real = schedule_module._offset

    def counting(zone: Any, ts: int) -> timedelta:
        calls.append(ts)
        return real(zone, ts)

    with mock.patch.object(schedule_module, "_offset", counting):
        fires = preview_fires(schedule, datetime(2026, 1, 1, tzinfo=UTC), 100)
    assert len(fires) == 100 and fires[-1].year == 2436  # 2100, 2200, 2300 have no 29th
    assert len(calls) <= 10 * len(fires)  # was ~1,660 per fire: one per day between them
    assert next_fire_after(schedule, fires[-1]) == datetime(2440, 2, 28, 23, tzinfo=UTC)
