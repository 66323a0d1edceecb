"""The blocking client's watch: the one resuming watch (`_watch.resuming_watch`), driven
step by step on a private event loop in the caller's thread.

Why not a second, blocking copy of the watch logic: reconnects, resyncs and the store
identity check are subtle, and two copies would drift. The async generator only needs
a stream to iterate; `BlockingStream` makes the blocking stub's stream look like one
(each step blocks the private loop, which runs nothing else).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class BlockingStream:
    """A blocking server-stream call presented as the grpc.aio call the watch expects."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def __aiter__(self) -> BlockingStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._call)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self._call.cancel()


def iterate(source: AsyncIterator[T]) -> Iterator[T]:
    """Yield `source`'s items, each awaited on a private event loop; closing this
    iterator (or leaving a `for` loop early) closes `source` and the loop."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(source))
            except StopAsyncIteration:
                return
    finally:
        try:
            loop.run_until_complete(source.aclose())  # type: ignore[attr-defined]
        finally:
            loop.close()
