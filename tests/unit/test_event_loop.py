"""Which event loop a role runs on (the event_loop setting)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from jobsched.cli import loop_factory
from jobsched.settings import ConfigError


def test_auto_and_uvloop_choose_uvloop_where_it_is_installed() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


def test_asyncio_chooses_asyncios_own_loop() -> None:
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop_factory("auto") is None
    with pytest.raises(ConfigError, match="event_loop=uvloop, but uvloop is not installed"):
        loop_factory("uvloop")
