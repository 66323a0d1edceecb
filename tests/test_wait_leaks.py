"""10,000 abandoned WaitRun calls leave nothing behind: no waiters, tasks or history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from _streams import until as until_settled

from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

CALLS = 10_000
BATCH = 1_000  # open at once: bounds sockets, memory and the time of one round
SETTLE_TIMEOUT = 30.0


async def until(condition: Callable[[], bool], what: str) -> None:
    await until_settled(condition, what, within=SETTLE_TIMEOUT)


def new_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started since `before` and still alive, except the one grpc keeps
    waiting for the next incoming call (it is replaced by a new task per call)."""
    return {
        task
        for task in asyncio.all_tasks() - before
        if "_request_registered_call" not in repr(task)
    }


async def test_10k_cancelled_waits_leave_nothing_behind() -> None:
    async with serve_in_process() as server:
        stub, manager = server.stub, server.manager
        waiters, history = manager.waiters, manager.feed.history
        # CONTINUE runs: attached waits going away take the detach path without
        # cancelling anything, so history must not move at all.
        runs = [
            (
                await stub.CreateRun(
                    pb.CreateRunRequest(
                        thread_id=f"t{i}", on_disconnect=run_pb2.DISCONNECT_MODE_CONTINUE
                    )
                )
            ).run
            for i in range(10)
        ]
        tasks_before = asyncio.all_tasks()
        history_before = (len(history), history.head_revision)

        for start in range(0, CALLS, BATCH):
            calls = [
                stub.WaitRun(
                    pb.WaitRunRequest(run_id=runs[i % len(runs)].run_id, attach=i % 2 == 0),
                    timeout=60,
                )
                for i in range(start, start + BATCH)
            ]
            await until(lambda: waiters.waiter_count == BATCH, f"{BATCH} waits are registered")
            assert waiters.count == len(runs)  # one shared future per run, not per call
            for call in calls:
                call.cancel()
            await until(lambda: waiters.waiter_count == 0, "every wait saw its cancellation")
            assert all(call.cancelled() for call in calls)

        await manager.wait_detach_cancels()
        assert (waiters.count, waiters.waiter_count) == (0, 0)
        await until(lambda: not new_tasks(tasks_before), "the calls' tasks are gone")
        assert len(asyncio.all_tasks()) <= len(tasks_before)
        assert (len(history), history.head_revision) == history_before
        for run in runs:
            got = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
            assert got.run == run
