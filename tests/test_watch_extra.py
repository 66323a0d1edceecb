"""Issue 4, points the main suites prove only indirectly, each with its own wire test.

- WatchRuns `start_revision = 0` is "from now", and an explicit zero `progress_interval`
  means the server default;
- the history is bounded by age as well as by count;
- cancelling a stream frees its watcher at once, even an idle or a stalled one;
- a watcher that never reads stays within its bound (no per-stream buffer);
- many waiters on one run share one wake-up and nobody polls;
- one scheduler serves every deadline (no task or timer per run);
- an attached waiter whose own call deadline passes counts as gone;
- malformed durations are INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from _streams import read, task_census, until
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain import MonotonicClock, RunManager, RunStatus
from runcontrol_server.domain.manager import DISCONNECT_CANCEL_REASON
from runcontrol_server.domain.model import Run
from runcontrol_server.domain.watch import READ_CHUNK
from runcontrol_server.stores.memory import InMemoryRunStore

CALL_TIMEOUT = 5.0
SETTLE_TIMEOUT = 10.0
MAX_MESSAGES = 10_000
# Where a watcher's own memory would be allocated, and how deep to trace to see it.
WATCH_MODULES = ("runcontrol_server/domain/watch.py", "runcontrol_server/servicer/watch.py")
WATCH_FRAMES = 12
Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]


async def read_to_error(call: Stream) -> None:
    for _ in range(MAX_MESSAGES):  # bounded; each read is bounded too
        await read(call)
    raise AssertionError("the stream did not end")


async def stream_error(call: Stream) -> RunControlError:
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_error(call)
    return from_grpc_error(ended.value)


async def create(stub: Any, thread_id: str = "t1", **fields: Any) -> run_pb2.RunRecord:
    response = await stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id, **fields))
    run: run_pb2.RunRecord = response.run
    return run


class FakeTime:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def big_struct(size: int) -> Struct:
    value = Struct()
    value.update({"blob": "x" * size})
    return value


# --- WatchRuns request semantics ------------------------------------------------------------


async def test_start_revision_zero_streams_from_now(server: InProcessServer) -> None:
    for i in range(3):
        await create(server.stub, f"old{i}")
    call = server.stub.WatchRuns(
        pb.WatchRunsRequest(start_revision=0, progress_interval=Duration(nanos=100_000_000))
    )
    # The first message is a progress one at the head: registered, and nothing replayed.
    first = await read(call)
    assert first.progress_only and first.revision == 3 and not first.events
    new = await create(server.stub, "new")
    for _ in range(MAX_MESSAGES):
        message = await read(call)
        if not message.progress_only:
            break
    assert message.revision == new.create_revision == 4
    assert [e.run.run_id for e in message.events] == [new.run_id]
    call.cancel()


async def test_zero_progress_interval_means_the_server_default() -> None:
    default = 0.125  # the server's, unlike any other interval in play here
    manager = RunManager(InMemoryRunStore(), progress_interval=default)
    async with serve_in_process(manager=manager) as server:
        call = server.stub.WatchRuns(pb.WatchRunsRequest(progress_interval=Duration()))
        message = await read(call)  # "never" would leave this read to time out
        assert message.progress_only and message.revision == 0
        (watcher,) = manager.watch_hub.watchers
        assert watcher.progress_interval == default
        call.cancel()


async def test_history_is_bounded_by_age_too() -> None:
    clock = FakeTime()
    store = InMemoryRunStore(
        clock=MonotonicClock(clock), history_limit=1000, history_max_age=timedelta(seconds=60)
    )
    async with serve_in_process(manager=RunManager(store, retention=None)) as server:
        for i in range(3):
            await create(server.stub, f"t{i}")
        clock.now += timedelta(seconds=61)
        await create(server.stub, "later")  # each append prunes what has aged out
        assert store.sizes()["history"] == 1
        error = await stream_error(server.stub.WatchRuns(pb.WatchRunsRequest(start_revision=1)))
        assert error.code == grpc.StatusCode.OUT_OF_RANGE
        assert error.reason == "REVISION_COMPACTED"
        assert error.metadata == {"compact_revision": "3"}
        resumed = server.stub.WatchRuns(pb.WatchRunsRequest(start_revision=4))
        assert (await read(resumed)).revision == 4
        resumed.cancel()


# --- resources of streams -----------------------------------------------------------------


async def test_cancelling_an_idle_stream_frees_its_watcher_at_once(
    server: InProcessServer,
) -> None:
    hub = server.manager.watch_hub
    tasks_before = task_census()  # before any call: long-lived tasks only
    # An hour between progress messages and no writes: nothing would wake the watcher,
    # so only the cancellation itself can free it (the bounded wait below is far shorter).
    call = server.stub.WatchRuns(
        pb.WatchRunsRequest(send_initial=True, progress_interval=Duration(seconds=3600))
    )
    assert (await read(call)).end_of_initial_set
    assert hub.count == 1
    call.cancel()
    async with asyncio.timeout(CALL_TIMEOUT):
        await hub.wait_closed()
    assert hub.count == 0
    await until(lambda: task_census() <= tasks_before, "the stream's handler task is gone")


async def test_cancelling_a_stalled_stream_frees_its_watcher_at_once(
    server: InProcessServer,
) -> None:
    hub = server.manager.watch_hub
    stalled = server.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
    assert (await read(stalled)).end_of_initial_set
    big = big_struct(60_000)
    for i in range(150):  # ~9 MB: the handler ends up blocked writing to a full window
        await create(server.stub, f"t{i}", metadata=big)
    (watcher,) = hub.watchers
    assert watcher.revision < await server.manager.revision(), "the stream is not stalled"
    stalled.cancel()
    # Blocked on a full window, nothing but the cancellation can end its handler.
    async with asyncio.timeout(CALL_TIMEOUT):
        await hub.wait_closed()
    assert hub.count == 0


async def test_never_reading_watcher_stays_within_its_bound() -> None:
    history_size = 20
    store = InMemoryRunStore(history_limit=history_size)
    async with serve_in_process(manager=RunManager(store)) as server:
        stub, hub = server.stub, server.manager.watch_hub
        stalled = server.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
        assert (await read(stalled)).end_of_initial_set
        big = big_struct(20_000)

        async def churn(runs: int) -> None:
            # Create, finish and delete: the store itself stays empty, so what memory
            # the server holds is the history and the watchers.
            for i in range(runs):
                run = await create(stub, f"t{i}", metadata=big)
                await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
                await stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id))
                assert store.sizes()["history"] <= history_size

        await churn(100)  # the stream stalls: its flow-control window is full
        (watcher,) = hub.watchers
        stalled_at = watcher.revision
        assert stalled_at < await store.revision(), "the stream is not stalled"
        gc.collect()
        tracemalloc.start(WATCH_FRAMES)
        try:
            before = tracemalloc.take_snapshot()
            await churn(100)  # ~6 MB more of events this watcher never reads
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        # Whatever a per-stream buffer would be made of is allocated on the watch path
        # (the domain watcher or the servicer's stream); shared server caches are not
        # this stream's memory and are bounded on their own.
        watch_path = [
            tracemalloc.Filter(True, f"*{name}", all_frames=True) for name in WATCH_MODULES
        ]
        grown = sum(
            stat.size_diff
            for stat in after.filter_traces(watch_path).compare_to(
                before.filter_traces(watch_path), "filename"
            )
        )
        assert grown < 64 * 1024, f"the watch path kept {grown} more bytes"
        assert watcher.revision == stalled_at, "the stalled watcher moved"
        assert store.sizes()["runs"] == 0
        # All it holds is a cursor and at most one chunk of shared change sets.
        assert watcher.held <= min(READ_CHUNK, history_size)

        # Nothing was queued for it: once it reads again, it gets what was in flight,
        # then finds its position gone from the history.
        error = await stream_error(stalled)
        assert error.code == grpc.StatusCode.OUT_OF_RANGE
        assert error.reason == "REVISION_COMPACTED"
        async with asyncio.timeout(CALL_TIMEOUT):
            await hub.wait_closed()


# --- WaitRun ----------------------------------------------------------------------------------


class CountingStore(InMemoryRunStore):
    """Counts reads of each run: a waiter that polled would read again and again."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    async def get_run(self, run_id: str) -> Run:
        self.reads[run_id] += 1
        return await super().get_run(run_id)


async def test_many_waiters_cost_one_shared_wake_up_and_no_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CountingStore()
    async with serve_in_process(manager=RunManager(store)) as server:
        waiters = server.manager.waiters
        run = await create(server.stub)
        calls = [
            server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id), timeout=20)
            for _ in range(100)
        ]
        await until(lambda: waiters.waiter_count == 100, "all 100 waits are registered")
        assert waiters.count == 1  # one shared future for the run
        assert store.reads[run.run_id] == 100  # one read each, on entry
        # Other runs change: a waiter woken by every change would read its run again.
        other = await create(server.stub, "t2")
        await server.stub.CancelRun(pb.CancelRunRequest(run_id=other.run_id))
        # An hour passes on the loop's clock, which every asyncio sleep, timeout and
        # timer runs by: a waiter that polled would now read its run again.
        loop = asyncio.get_running_loop()
        real_time = loop.time
        monkeypatch.setattr(loop, "time", lambda: real_time() + 3600)
        for _ in range(10):  # the loop turns that due timers and their reads take
            await asyncio.sleep(0)
        assert store.reads[run.run_id] == 100
        await server.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
        responses = await asyncio.gather(*calls)
        assert all(r.done and r.run.status == run_pb2.RUN_STATUS_INTERRUPTED for r in responses)
        # The one wake-up carried the final record: nobody read the run again.
        assert store.reads[run.run_id] == 100
        assert (waiters.count, waiters.waiter_count) == (0, 0)


async def test_attached_waiter_whose_call_deadline_passes_cancels_the_run(
    server: InProcessServer,
) -> None:
    run = await create(server.stub)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id, attach=True), timeout=0.2)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    response = await server.stub.WaitRun(
        pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(seconds=5)), timeout=10
    )
    assert response.done
    assert response.run.status == run_pb2.RUN_STATUS_INTERRUPTED
    assert response.run.cancel_reason == DISCONNECT_CANCEL_REASON


# --- deadlines ----------------------------------------------------------------------------------


async def test_one_scheduler_for_all_deadlines_no_task_or_timer_per_run(
    server: InProcessServer,
) -> None:
    loop = asyncio.get_running_loop()
    janitor = server.manager.janitor
    assert janitor.running

    def timers() -> int:
        # The event loop's pending call_later/call_at handles (asyncio keeps them here).
        scheduled: list[object] = getattr(loop, "_scheduled")  # noqa: B009
        return len(scheduled)

    tasks_before = task_census()  # before any call: long-lived tasks only
    await create(server.stub, "warm-up", timeout=Duration(seconds=7200))
    timers_before = timers()
    runs = [
        await create(server.stub, f"t{i}", timeout=Duration(seconds=3600 + i)) for i in range(500)
    ]
    assert all(run.HasField("deadline") for run in runs)
    # The calls' own tasks end with their calls; a task per deadline would stay.
    await until(lambda: task_census() <= tasks_before, "no task outlives its call")
    assert timers() - timers_before < 10, "a timer per deadline"
    # And the one scheduler does expire them: bring the deadlines into the past.
    soon = [
        await create(server.stub, f"s{i}", timeout=Duration(nanos=(1 + i % 5) * 10_000_000))
        for i in range(50)
    ]
    last = soon[-1]
    waited = await server.stub.WaitRun(
        pb.WaitRunRequest(run_id=last.run_id, timeout=Duration(seconds=5)), timeout=10
    )
    assert waited.run.status == run_pb2.RUN_STATUS_TIMEOUT
    # The last one had the latest of the short deadlines: the others went before it.
    for run in soon:
        got = await server.manager.get_run(run.run_id)
        assert got.status is RunStatus.TIMEOUT
    assert server.manager.store.sizes()["deadlines"] == len(runs) + 1
    assert sum(t.get_name() == "runcontrol-janitor" for t in asyncio.all_tasks()) == 1


# --- malformed durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.WatchRunsRequest(progress_interval=Duration(seconds=1, nanos=-1)), "progress_interval"),
        (pb.WatchRunsRequest(progress_interval=Duration(nanos=2_000_000_000)), "progress_interval"),
        (pb.WatchRunsRequest(progress_interval=Duration(seconds=10**12)), "progress_interval"),
        (pb.WatchRunsRequest(progress_interval=Duration(nanos=99_999_999)), "progress_interval"),
        (
            pb.WatchRunsRequest(progress_interval=Duration(seconds=3601)),
            "progress_interval",
        ),
        (pb.WatchRunsRequest(statuses=[run_pb2.RUN_STATUS_PENDING, 42]), "statuses"),
        (pb.WatchRunsRequest(start_revision=-(2**62)), "start_revision"),
    ],
)
async def test_watch_bad_input_names_the_field(
    server: InProcessServer, request_: pb.WatchRunsRequest, field: str
) -> None:
    error = await stream_error(server.stub.WatchRuns(request_))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.metadata == {"field": field}
    assert server.manager.watch_hub.count == 0


@pytest.mark.parametrize(
    "wait_timeout",
    [Duration(seconds=10**12), Duration(nanos=1_000_000_000), Duration(seconds=-1, nanos=5)],
)
async def test_wait_malformed_timeout_names_the_field(
    server: InProcessServer, wait_timeout: Duration
) -> None:
    run = await create(server.stub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.stub.WaitRun(
            pb.WaitRunRequest(run_id=run.run_id, timeout=wait_timeout), timeout=5
        )
    error = from_grpc_error(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.metadata == {"field": "timeout"}
    assert server.manager.waiters.waiter_count == 0
