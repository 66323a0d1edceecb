"""The server's event-loop choice."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from runcontrol_server import eventloop


def test_asyncio_is_the_default_factory() -> None:
    assert eventloop.loop_factory("asyncio") is None


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event loop"):
        eventloop.loop_factory("trio")


def test_auto_and_uvloop_follow_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(eventloop.importlib, "import_module", missing)
    assert eventloop.loop_factory("auto") is None
    with pytest.raises(RuntimeError, match="not installed"):
        eventloop.loop_factory("uvloop")
    fake = types.SimpleNamespace(new_event_loop=asyncio.new_event_loop)
    monkeypatch.setattr(eventloop.importlib, "import_module", lambda name: fake)
    assert eventloop.loop_factory("auto") is asyncio.new_event_loop
    assert eventloop.loop_factory("uvloop") is asyncio.new_event_loop


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert eventloop.run(answer(), "asyncio") == 42
