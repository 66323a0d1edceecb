"""10,000 abandoned WaitRun calls leave nothing behind: no waiters, tasks or history."""

from __future__ import annotations

from _streams import task_census, until

from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

CALLS = 10_000
BATCH = 1_000  # open at once: bounds sockets, memory and the time of one round
SETTLE_TIMEOUT = 30.0


async def test_10k_cancelled_waits_leave_nothing_behind() -> None:
    async with serve_in_process() as server:
        tasks_before = task_census()  # before any call: long-lived tasks only
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
        history_before = (len(history), history.head_revision)

        for start in range(0, CALLS, BATCH):
            calls = [
                stub.WaitRun(
                    pb.WaitRunRequest(run_id=runs[i % len(runs)].run_id, attach=i % 2 == 0),
                    timeout=60,
                )
                for i in range(start, start + BATCH)
            ]
            await until(
                lambda: waiters.waiter_count == BATCH,
                f"{BATCH} waits are registered",
                within=SETTLE_TIMEOUT,
            )
            assert waiters.count == len(runs)  # one shared future per run, not per call
            for call in calls:
                call.cancel()
            await until(
                lambda: waiters.waiter_count == 0,
                "every wait saw its cancellation",
                within=SETTLE_TIMEOUT,
            )
            assert all(call.cancelled() for call in calls)

        await manager.wait_detach_cancels()
        assert (waiters.count, waiters.waiter_count) == (0, 0)
        await until(
            lambda: task_census() <= tasks_before,
            "the calls' tasks are gone",
            within=SETTLE_TIMEOUT,
        )
        assert (len(history), history.head_revision) == history_before
        for run in runs:
            got = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
            assert got.run == run
