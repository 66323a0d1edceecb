"""WatchRuns fan-out over the wire: many caught-up streams waiting on their own futures,
sharing batches per filter, freed completely when cancelled; failures in the streaming
loop still end the stream through the error table."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from _streams import open_watch, read, until
from google.protobuf.duration_pb2 import Duration

from runcontrol.errors import from_grpc_error
from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.watch import WatchBatch
from runcontrol_server.servicer.watch import EventEncoder

Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]
CALL_TIMEOUT = 5.0
INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
RUNNING = run_pb2.RUN_STATUS_RUNNING


async def test_cancelled_waiting_streams_leave_no_waiter_timer_or_filter_behind(
    server: InProcessServer,
) -> None:
    hub = server.manager.watch_hub
    history = server.manager.feed.history
    calls = [await open_watch(server.stub, thread_id=f"t{i % 3}") for i in range(60)]
    await until(lambda: history.waiter_count == 60, "every stream waits for a change")
    assert hub.filter_count == 3
    watchers = hub.watchers
    assert all(watcher.timer_armed for watcher in watchers)

    for call in calls:
        call.cancel()
    async with asyncio.timeout(CALL_TIMEOUT):
        await hub.wait_closed()

    assert history.waiter_count == 0
    assert hub.filter_count == 0
    assert not any(watcher.timer_armed for watcher in watchers)


async def test_fan_out_delivers_every_change_to_every_stream_by_its_filter(
    server: InProcessServer,
) -> None:
    stub = server.stub
    same = [await open_watch(stub, thread_id="t1") for _ in range(20)]
    running = [await open_watch(stub, statuses=[RUNNING]) for _ in range(5)]
    other = [await open_watch(stub, thread_id="t2") for _ in range(5)]
    revisions: list[int] = []
    for _ in range(10):
        # Each create interrupts the previous run of t1: two events in one revision.
        response = await stub.CreateRun(
            pb.CreateRunRequest(thread_id="t1", multitask_strategy=INTERRUPT)
        )
        revisions.append(response.run.mod_revision)
    claimed = await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=response.run.run_id, status=RUNNING, worker_id="w")
    )
    revisions.append(claimed.run.mod_revision)

    expected = [await read(same[0]) for _ in revisions]
    assert [m.revision for m in expected] == revisions
    assert [len(m.events) for m in expected] == [1] + [2] * 9 + [1]
    for call in same[1:]:
        assert [await read(call) for _ in revisions] == expected
    for call in running:  # only the claim, as the run entering the filter
        message = await read(call)
        assert message.revision == revisions[-1]
        assert [e.type for e in message.events] == [run_pb2.EVENT_TYPE_ADDED]
    # Nothing matched the others: they looked at every revision and wait, sending nothing.
    hub = server.manager.watch_hub
    await until(
        lambda: all(
            w.revision == revisions[-1] for w in hub.watchers if w.filter.thread_id == "t2"
        ),
        "the t2 streams looked at every revision",
    )
    for call in [*same, *running, *other]:
        call.cancel()
    async with asyncio.timeout(CALL_TIMEOUT):
        await server.manager.watch_hub.wait_closed()


async def test_progress_messages_every_interval_without_traffic(
    server: InProcessServer,
) -> None:
    call = await open_watch(server.stub, progress_interval=Duration(nanos=100_000_000))
    # The request's interval is the stream's (when within it they come, not before, is
    # proven on a stopped clock in tests/unit/test_watch_wakeups.py).
    (watcher,) = server.manager.watch_hub.watchers
    assert watcher.progress_interval == 0.1
    for _ in range(3):
        message = await read(call)
        assert message.progress_only and message.revision == 0
    call.cancel()


async def test_unexpected_failure_while_streaming_is_internal_and_frees_the_watcher(
    server: InProcessServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    encode_batch = EventEncoder.encode_batch

    def failing(self: EventEncoder, batch: WatchBatch) -> bytes:
        if batch.revision >= 2:
            raise RuntimeError("secret detail")
        return encode_batch(self, batch)

    monkeypatch.setattr(EventEncoder, "encode_batch", failing)
    call = await open_watch(server.stub)
    await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    assert (await read(call)).revision == 1
    with caplog.at_level(logging.ERROR):
        await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t2"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await read(call)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (raised.value.details() or "")
    assert "unexpected error in RPC handler" in caplog.text
    assert server.manager.watch_hub.count == 0
    assert server.manager.feed.history.waiter_count == 0


async def test_shutdown_while_streams_wait_ends_each_with_its_resume_revision(
    server: InProcessServer,
) -> None:
    calls = [await open_watch(server.stub, thread_id="t1") for _ in range(10)]
    await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    for call in calls:
        assert (await read(call)).revision == 1
    history = server.manager.feed.history
    await until(lambda: history.waiter_count == 10, "every stream waits again")
    await server.manager.begin_shutdown()
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await read(call)
        error = from_grpc_error(raised.value)
        assert error.reason == "SHUTTING_DOWN"
        assert error.metadata["resume_revision"] == "2"
    assert history.waiter_count == 0
