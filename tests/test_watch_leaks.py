"""Opening and cancelling many WatchRuns streams leaves nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

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
    hub = server.manager.watch_hub
    history = server.manager.feed.history
    await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    await open_and_cancel(server.stub)  # warm up the channel and the server
    async with asyncio.timeout(10):
        await hub.wait_closed()
    tasks_before = asyncio.all_tasks()
    history_before, head_before = len(history), history.head_revision

    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(CYCLES // WAVE):
        await asyncio.gather(*(open_and_cancel(server.stub) for _ in range(WAVE)))
    elapsed = loop.time() - started

    # The server unwinds cancelled streams asynchronously: wait (bounded) for that.
    async with asyncio.timeout(10):
        await hub.wait_closed()
    assert hub.count == 0
    unwinding = asyncio.all_tasks() - tasks_before
    if unwinding:
        await asyncio.wait(unwinding, timeout=10)
    assert len(asyncio.all_tasks()) <= len(tasks_before), asyncio.all_tasks() - tasks_before
    assert (len(history), history.head_revision) == (history_before, head_before)
    assert elapsed < 120, f"{CYCLES} cycles took {elapsed:.1f}s"
