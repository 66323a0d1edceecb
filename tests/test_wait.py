"""WaitRun over the wire: blocking, timeouts, many waiters, attach and disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from _streams import until
from google.protobuf.duration_pb2 import Duration

from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.manager import DISCONNECT_CANCEL_REASON

if TYPE_CHECKING:
    from runcontrol.v1.run_control_pb2_grpc import RunControlAsyncStub as Stub

SETTLE_TIMEOUT = 10.0


async def create(stub: Stub, thread_id: str, **fields: object) -> run_pb2.RunRecord:
    response = await stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id, **fields))  # type: ignore[arg-type]
    return response.run


async def finish(stub: Stub, run_id: str) -> None:
    for status in (run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_SUCCESS):
        await stub.SetRunStatus(pb.SetRunStatusRequest(run_id=run_id, status=status))


def waiting(server: InProcessServer, n: int) -> Callable[[], bool]:
    return lambda: server.manager.waiters.waiter_count == n


async def test_a_finished_run_answers_done_at_once(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    await finish(server.stub, run.run_id)
    response = await server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id), timeout=5)
    assert response.done
    assert response.run.status == run_pb2.RUN_STATUS_SUCCESS
    assert server.manager.waiters.count == 0


async def test_blocks_until_the_run_finishes(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    # Zero means "no own timeout": it still waits for the end.
    call = server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id, timeout=Duration()), timeout=10)
    await until(waiting(server, 1), "the wait is registered")
    assert not call.done()
    await finish(server.stub, run.run_id)
    response = await call
    assert response.done
    assert response.run.status == run_pb2.RUN_STATUS_SUCCESS
    assert response.run.mod_revision == run.create_revision + 2
    assert server.manager.waiters.count == 0


async def test_timeout_answers_not_done_with_the_current_record(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    await server.stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w")
    )
    response = await server.stub.WaitRun(
        pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(nanos=50_000_000)), timeout=10
    )
    assert not response.done
    assert response.run.status == run_pb2.RUN_STATUS_RUNNING
    assert response.run.worker_id == "w"
    assert server.manager.waiters.count == 0


async def test_200_waiters_share_one_wake_up(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    calls = [
        server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id), timeout=20) for _ in range(200)
    ]
    await until(waiting(server, 200), "all 200 waits are registered")
    # One shared future for the run, whatever the number of waiters.
    assert server.manager.waiters.count == 1
    await server.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="stop"))
    responses = await asyncio.gather(*calls)
    assert all(r.done and r.run.status == run_pb2.RUN_STATUS_INTERRUPTED for r in responses)
    assert {r.run.mod_revision for r in responses} == {run.create_revision + 1}
    assert (server.manager.waiters.count, server.manager.waiters.waiter_count) == (0, 0)


async def _attach_and_go_away(server: InProcessServer, run_id: str, *, attach: bool) -> None:
    call = server.stub.WaitRun(pb.WaitRunRequest(run_id=run_id, attach=attach), timeout=10)
    await until(waiting(server, 1), "the wait is registered")
    assert call.cancel()
    # The server learns of the disconnect when grpc cancels the handler.
    await until(waiting(server, 0), "the server saw the disconnect")
    await server.manager.wait_detach_cancels()


async def test_attached_caller_going_away_cancels_a_cancel_mode_run(
    server: InProcessServer,
) -> None:
    run = await create(server.stub, "t1")
    await _attach_and_go_away(server, run.run_id, attach=True)
    response = await server.stub.WaitRun(
        pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(seconds=5)), timeout=10
    )
    assert response.done
    assert response.run.status == run_pb2.RUN_STATUS_INTERRUPTED
    assert response.run.cancel_action == run_pb2.CANCEL_ACTION_INTERRUPT
    assert response.run.cancel_reason == DISCONNECT_CANCEL_REASON
    assert "disconnected" in response.run.cancel_reason


async def test_attached_caller_going_away_leaves_a_continue_mode_run(
    server: InProcessServer,
) -> None:
    run = await create(server.stub, "t1", on_disconnect=run_pb2.DISCONNECT_MODE_CONTINUE)
    await _attach_and_go_away(server, run.run_id, attach=True)
    got = await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert got.run == run


async def test_unattached_caller_going_away_leaves_the_run(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    assert run.on_disconnect == run_pb2.DISCONNECT_MODE_CANCEL
    await _attach_and_go_away(server, run.run_id, attach=False)
    got = await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert got.run == run


async def test_attached_run_that_finished_is_not_touched(server: InProcessServer) -> None:
    run = await create(server.stub, "t1")
    response = await server.stub.WaitRun(
        pb.WaitRunRequest(run_id=run.run_id, attach=True, timeout=Duration(nanos=10_000_000)),
        timeout=10,
    )
    # An attached caller that got its answer has not gone away early.
    assert not response.done
    await server.manager.wait_detach_cancels()
    got = await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert got.run.status == run_pb2.RUN_STATUS_PENDING


async def test_shutdown_ends_waits_with_shutting_down_and_cancels_nothing(
    server: InProcessServer, expect_error: Any
) -> None:
    run = await create(server.stub, "t1")
    call = server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id, attach=True), timeout=10)
    await until(waiting(server, 1), "the wait is registered")
    revision = await server.manager.revision()
    server.manager.waiters.shutdown(revision)
    await expect_error(
        call,
        grpc.StatusCode.UNAVAILABLE,
        "SHUTTING_DOWN",
        {"revision": str(revision), "resume_revision": str(revision + 1)},
    )
    await server.manager.wait_detach_cancels()
    got = await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert got.run.status == run_pb2.RUN_STATUS_PENDING
    assert server.manager.waiters.count == 0


async def test_unknown_run_is_not_found(server: InProcessServer, expect_error: Any) -> None:
    await expect_error(
        server.stub.WaitRun(pb.WaitRunRequest(run_id="nope"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
        {"run_id": "nope"},
    )
    assert (server.manager.waiters.count, server.manager.waiters.waiter_count) == (0, 0)


async def test_bad_input_names_the_field(server: InProcessServer, expect_error: Any) -> None:
    run = await create(server.stub, "t1")
    for request, field in [
        (pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(seconds=-1)), "timeout"),
        (pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(nanos=-1)), "timeout"),
        (pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(seconds=1, nanos=-1)), "timeout"),
        (pb.WaitRunRequest(run_id=""), "run_id"),
    ]:
        await expect_error(
            server.stub.WaitRun(request, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {"field": field},
        )
