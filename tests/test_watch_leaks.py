"""Opening and cancelling many WatchRuns streams leaves nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from _streams import task_census, until

from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb

CYCLES = 10_000
# Streams opened at once: keeps the run to seconds while staying far below the limit.
WAVE = 50


async def open_and_cancel(stub: Any) -> None:
    # send_initial on an empty filter: its end marker proves the server registered it.
    call = stub.WatchRuns(pb.WatchRunsRequest(thread_id="nobody", send_initial=True))
    message = await call.read()
    assert message is not grpc.aio.EOF and message.end_of_initial_set
    call.cancel()


@pytest.mark.timeout(180)
async def test_ten_thousand_cancelled_watches_leave_nothing_behind(
    server: InProcessServer,
) -> None:
    tasks_before = task_census()  # before any call: long-lived tasks only
    hub = server.manager.watch_hub
    history = server.manager.feed.history
    await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    await open_and_cancel(server.stub)  # warm up the channel and the server
    async with asyncio.timeout(10):
        await hub.wait_closed()
    history_before, head_before = len(history), history.head_revision

    for _ in range(CYCLES // WAVE):
        await asyncio.gather(*(open_and_cancel(server.stub) for _ in range(WAVE)))

    # The server unwinds cancelled streams asynchronously: wait (bounded) for that.
    async with asyncio.timeout(10):
        await hub.wait_closed()
    assert hub.count == 0
    await until(lambda: task_census() <= tasks_before, "the streams' tasks are gone")
    assert (len(history), history.head_revision) == (history_before, head_before)
