"""Bounded waits shared by the over-the-wire tests: they fail with a reason, never hang."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb

Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]
READ_TIMEOUT = 5.0
SETTLE_TIMEOUT = 10.0


async def until(
    condition: Callable[[], bool], what: str, *, within: float = SETTLE_TIMEOUT
) -> None:
    """Wait for state that no message announces (a call registered, a janitor round)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


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
