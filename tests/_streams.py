"""Bounded waits shared by the tests (they fail with a reason, never hang), and a census
of the event loop's tasks for the tests that prove nothing is left behind."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb

Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]
READ_TIMEOUT = 5.0
SETTLE_TIMEOUT = 20.0


async def until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, *, within: float = SETTLE_TIMEOUT
) -> None:
    """Wait for state that no message announces (a call registered, a janitor round).

    `condition` may return an awaitable (e.g. a store read). `within` only guards against
    a hang: reaching it fails the test naming `what`; it is never a measurement.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                reached = condition()
                if inspect.isawaitable(reached):
                    reached = await reached
                if reached:
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


async def read(call: Stream, within: float = READ_TIMEOUT) -> pb.WatchRunsResponse:
    """The next WatchRuns message; fails the test if the stream ends or stalls."""
    async with asyncio.timeout(within):
        message = await call.read()
    assert message is not grpc.aio.EOF, "stream ended"
    assert isinstance(message, pb.WatchRunsResponse)
    return message


async def open_watch(stub: Any, **fields: Any) -> Stream:
    """Open a stream and wait until the server has registered it (end of initial set)."""
    call = stub.WatchRuns(pb.WatchRunsRequest(send_initial=True, **fields))
    while not (await read(call)).end_of_initial_set:
        pass
    return call


def task_census() -> Counter[str]:
    """How many live tasks of each kind (by coroutine) the running loop has.

    Taken before a test's first call it counts only long-lived tasks (grpc's accept
    loops, the janitor, the feed reader): a task leaked by the test's calls then shows
    as one more of its kind. grpc replaces the task that waits for the next call by a
    new one of the same kind after each call: the counts compare, identities would not.
    """
    return Counter(getattr(task.get_coro(), "__qualname__", "?") for task in asyncio.all_tasks())
