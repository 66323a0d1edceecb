"""Which asyncio event loop the server runs on: uvloop when installed, else asyncio's.

uvloop (a regular dependency on the platforms it has wheels for) measurably speeds up
grpc.aio's per-call work (see BENCHMARKS.md); behaviour is the same on either loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOPS = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for loop `name` (None: asyncio's default).

    "auto" takes uvloop when it is importable; "uvloop" insists on it.
    """
    if name not in LOOPS:
        raise ValueError(f"unknown event loop {name!r}; expected one of {', '.join(LOOPS)}")
    if name == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if name == "uvloop":
            raise RuntimeError(
                "the uvloop event loop was asked for but is not installed (pip install uvloop)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coro: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """`asyncio.run` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)
