"""WatchRuns over the wire: the six guarantees, filters, initial sets, limits, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from _streams import open_watch, read
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from runcontrol.errors import from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain import RunManager
from runcontrol_server.servicer import watch as watch_module
from runcontrol_server.servicer.watch import INITIAL_CHUNK, encode_response
from runcontrol_server.stores.memory import InMemoryRunStore

ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE
INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
ADDED, MODIFIED, DELETED = (
    run_pb2.EVENT_TYPE_ADDED,
    run_pb2.EVENT_TYPE_MODIFIED,
    run_pb2.EVENT_TYPE_DELETED,
)
PENDING, RUNNING, SUCCESS = (
    run_pb2.RUN_STATUS_PENDING,
    run_pb2.RUN_STATUS_RUNNING,
    run_pb2.RUN_STATUS_SUCCESS,
)
UNSPECIFIED = run_pb2.RUN_STATUS_UNSPECIFIED
Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]


async def read_until(call: Stream, revision: int) -> list[pb.WatchRunsResponse]:
    """Event messages up to and including `revision` (progress messages skipped)."""
    messages: list[pb.WatchRunsResponse] = []
    for _ in range(10_000):  # bounded: one message per revision at most
        message = await read(call)
        if not message.progress_only:
            messages.append(message)
        if message.revision >= revision:
            return messages
    raise AssertionError("too many messages")


async def read_to_error(call: Stream) -> None:
    for _ in range(10_000):  # bounded; each read is bounded too
        await read(call)


async def stream_error(call: Stream) -> Any:
    """The decoded error that ends the stream (status + ErrorInfo trailer)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_to_error(call)
    return from_grpc_error(raised.value)


async def create(stub: Any, thread_id: str = "t1", **fields: Any) -> pb.CreateRunResponse:
    response: pb.CreateRunResponse = await stub.CreateRun(
        pb.CreateRunRequest(thread_id=thread_id, **fields)
    )
    return response


async def move(stub: Any, run_id: str, status: run_pb2.RunStatus.ValueType) -> int:
    response = await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run_id, status=status, worker_id="w")
    )
    return int(response.run.mod_revision)


async def head(server: InProcessServer) -> int:
    return await server.manager.revision()


@pytest.fixture
async def tiny() -> AsyncIterator[InProcessServer]:
    """A server whose history keeps only 5 change sets and allows 3 watchers."""
    manager = RunManager(InMemoryRunStore(history_limit=5), max_watchers=3)
    async with serve_in_process(manager=manager) as running:
        yield running


# --- the six guarantees ----------------------------------------------------------------


async def test_ordered_events_arrive_in_revision_order(server: InProcessServer) -> None:
    call = await open_watch(server.stub)
    for i in range(10):
        run = (await create(server.stub, f"t{i % 3}", multitask_strategy=ENQUEUE)).run
        if i % 2:
            await server.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    messages = await read_until(call, await head(server))
    revisions = [m.revision for m in messages]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert revisions == list(range(1, 16))
    for message in messages:
        assert all(e.revision == message.revision for e in message.events)
    call.cancel()


async def test_unique_no_event_twice_across_history_to_live_handoff(
    server: InProcessServer,
) -> None:
    for i in range(10):
        await create(server.stub, f"t{i}")
    # Starts in history (1..10) and continues live while writers keep going.
    call = server.stub.WatchRuns(pb.WatchRunsRequest(start_revision=1))
    writers = asyncio.gather(*(create(server.stub, f"u{i}") for i in range(10)))
    first = await read(call)
    await writers
    messages = [first, *await read_until(call, 20)]
    seen = [(e.revision, e.run.run_id, e.type) for m in messages for e in m.events]
    assert len(seen) == len(set(seen)) == 20
    assert [m.revision for m in messages] == list(range(1, 21))
    call.cancel()


async def test_atomic_create_that_interrupts_two_runs_is_one_message(
    server: InProcessServer,
) -> None:
    first = (await create(server.stub, multitask_strategy=ENQUEUE)).run
    second = (await create(server.stub, multitask_strategy=ENQUEUE)).run
    call = await open_watch(server.stub)
    created = await create(server.stub, multitask_strategy=INTERRUPT)
    message = await read(call)
    assert message.revision == created.run.create_revision
    assert [(e.type, e.run.run_id, e.prev_status, e.run.status) for e in message.events] == [
        (MODIFIED, first.run_id, PENDING, run_pb2.RUN_STATUS_INTERRUPTED),
        (MODIFIED, second.run_id, PENDING, run_pb2.RUN_STATUS_INTERRUPTED),
        (ADDED, created.run.run_id, UNSPECIFIED, PENDING),
    ]
    assert all(e.revision == message.revision for e in message.events)
    call.cancel()


async def test_reliable_slow_reader_gets_every_revision_from_history(
    server: InProcessServer,
) -> None:
    call = await open_watch(server.stub)
    # Many concurrent writers while the watcher does not read at all.
    await asyncio.gather(*(create(server.stub, f"t{i}") for i in range(200)))
    messages = await read_until(call, 200)
    assert [m.revision for m in messages] == list(range(1, 201))
    call.cancel()


async def test_resumable_reconnect_yields_exactly_what_was_missed(
    server: InProcessServer,
) -> None:
    call = await open_watch(server.stub)
    for i in range(3):
        await create(server.stub, f"t{i}")
    last = (await read_until(call, 3))[-1].revision
    call.cancel()
    missed = [(await create(server.stub, f"m{i}")).run.run_id for i in range(4)]
    resumed = server.stub.WatchRuns(pb.WatchRunsRequest(start_revision=last + 1))
    messages = await read_until(resumed, last + 4)
    assert [m.revision for m in messages] == [4, 5, 6, 7]
    assert [e.run.run_id for m in messages for e in m.events] == missed
    resumed.cancel()


async def test_bookmarkable_progress_while_nothing_matches() -> None:
    manager = RunManager(InMemoryRunStore(), progress_interval=0.1)
    async with serve_in_process(manager=manager) as server:
        # No progress_interval in the request: the server default (here 0.1 s) applies.
        call = await open_watch(server.stub, thread_id="quiet")
        for i in range(3):
            await create(server.stub, f"busy{i}")
        for _ in range(50):  # bounded: progress arrives every 0.1 s
            message = await read(call)
            assert message.progress_only and not message.events
            if message.revision == 3:
                break
        else:
            raise AssertionError("no progress message at the current revision")
        call.cancel()


async def test_progress_interval_from_the_request(server: InProcessServer) -> None:
    call = await open_watch(
        server.stub, thread_id="quiet", progress_interval=Duration(nanos=100_000_000)
    )
    message = await read(call)
    assert message.progress_only and message.revision == 0
    # The request's interval, not the server's 5 s default.
    (watcher,) = server.manager.watch_hub.watchers
    assert watcher.progress_interval == 0.1
    call.cancel()


# --- compaction --------------------------------------------------------------------------


async def test_resume_older_than_history_is_out_of_range(tiny: InProcessServer) -> None:
    for i in range(8):
        await create(tiny.stub, f"t{i}")
    call = tiny.stub.WatchRuns(pb.WatchRunsRequest(start_revision=2))
    error = await stream_error(call)
    assert error.code == grpc.StatusCode.OUT_OF_RANGE
    assert error.reason == "REVISION_COMPACTED"
    assert error.metadata == {"compact_revision": "3"}


async def test_slow_consumer_that_falls_off_history_ends_with_compacted(
    tiny: InProcessServer,
) -> None:
    call = await open_watch(tiny.stub)
    # Written in one event-loop step (no await yields), so the stream's handler cannot
    # keep up: its cursor (revision 1) leaves the 5-entry history.
    for i in range(12):
        await tiny.manager.create_run(f"t{i}")
    error = await stream_error(call)
    assert error.code == grpc.StatusCode.OUT_OF_RANGE
    assert error.reason == "REVISION_COMPACTED"
    assert error.metadata == {"compact_revision": str(tiny.manager.feed.history.compact_revision)}
    assert tiny.manager.feed.history.compact_revision == 7


# --- filters ------------------------------------------------------------------------------


async def test_status_filter_sends_entering_as_added_and_leaving_as_deleted(
    server: InProcessServer,
) -> None:
    call = await open_watch(server.stub, statuses=[RUNNING])
    run = (await create(server.stub)).run  # PENDING: not seen
    claimed = await move(server.stub, run.run_id, RUNNING)
    finished = await move(server.stub, run.run_id, SUCCESS)
    entered, left = await read(call), await read(call)
    assert entered.revision == claimed
    assert [(e.type, e.prev_status, e.run.status) for e in entered.events] == [
        (ADDED, PENDING, RUNNING)
    ]
    assert left.revision == finished
    assert [(e.type, e.prev_status, e.run.status) for e in left.events] == [
        (DELETED, RUNNING, SUCCESS)
    ]
    call.cancel()


async def test_thread_and_run_id_filters_and_delete_events(server: InProcessServer) -> None:
    mine = (await create(server.stub, "mine")).run
    other = (await create(server.stub, "mine", multitask_strategy=ENQUEUE)).run
    by_thread = await open_watch(server.stub, thread_id="mine")
    by_id = await open_watch(server.stub, run_ids=[mine.run_id])
    await create(server.stub, "elsewhere")
    await server.stub.CancelRun(pb.CancelRunRequest(run_id=other.run_id))
    await server.stub.CancelRun(pb.CancelRunRequest(run_id=mine.run_id))
    deleted = await server.stub.DeleteRun(pb.DeleteRunRequest(run_id=mine.run_id))
    thread_messages = await read_until(by_thread, deleted.revision)
    assert [(e.run.run_id, e.type) for m in thread_messages for e in m.events] == [
        (other.run_id, MODIFIED),
        (mine.run_id, MODIFIED),
        (mine.run_id, DELETED),
    ]
    id_messages = await read_until(by_id, deleted.revision)
    assert [(e.type, e.prev_status) for m in id_messages for e in m.events] == [
        (MODIFIED, PENDING),
        (DELETED, run_pb2.RUN_STATUS_INTERRUPTED),
    ]
    by_thread.cancel()
    by_id.cancel()


# --- send_initial -------------------------------------------------------------------------


async def test_send_initial_is_consistent_with_one_revision_then_streams_on(
    server: InProcessServer,
) -> None:
    active = (await create(server.stub)).run
    done = (await create(server.stub, "t2")).run
    await move(server.stub, done.run_id, RUNNING)
    await move(server.stub, done.run_id, SUCCESS)
    snapshot_revision = await head(server)
    call = server.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True, statuses=[PENDING]))
    initial = await read(call)
    assert initial.revision == snapshot_revision and not initial.end_of_initial_set
    assert [(e.type, e.run.run_id, e.prev_status) for e in initial.events] == [
        (ADDED, active.run_id, UNSPECIFIED)
    ]
    assert initial.events[0].revision == active.mod_revision
    end = await read(call)
    assert end.end_of_initial_set and end.revision == snapshot_revision and not end.events
    later = (await create(server.stub, "t3")).run
    message = await read(call)
    assert message.revision == snapshot_revision + 1 == later.create_revision
    call.cancel()


async def test_send_initial_chunks_large_sets(server: InProcessServer) -> None:
    total = 2 * INITIAL_CHUNK + 1
    for i in range(total):
        await server.manager.create_run(f"t{i}")
    call = server.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
    sizes = []
    for _ in range(10):
        message = await read(call)
        assert message.revision == total
        if message.end_of_initial_set:
            break
        sizes.append(len(message.events))
    assert sizes == [INITIAL_CHUNK, INITIAL_CHUNK, 1]
    call.cancel()


# --- limits, resources, shutdown --------------------------------------------------------


async def test_watcher_limit_is_resource_exhausted(tiny: InProcessServer) -> None:
    calls = [await open_watch(tiny.stub) for _ in range(3)]
    error = await stream_error(tiny.stub.WatchRuns(pb.WatchRunsRequest()))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "LIMIT_EXCEEDED"
    assert error.metadata == {"limit": "max_watchers"}
    for call in calls:
        call.cancel()
    await all_closed(tiny)
    # The slots are free again.
    calls = [await open_watch(tiny.stub) for _ in range(3)]
    for call in calls:
        call.cancel()
    await all_closed(tiny)


async def all_closed(server: InProcessServer) -> None:
    """Wait (bounded) until the server has unwound every cancelled stream."""
    async with asyncio.timeout(5):
        await server.manager.watch_hub.wait_closed()


async def test_cancelling_a_stream_frees_its_watcher(server: InProcessServer) -> None:
    hub = server.manager.watch_hub
    call = await open_watch(server.stub)
    assert hub.count == 1
    call.cancel()
    await all_closed(server)
    assert hub.count == 0


async def test_never_reading_watcher_does_not_slow_writers_or_other_watchers(
    server: InProcessServer,
) -> None:
    big = Struct()
    big.update({"blob": "x" * 20_000})
    stalled = await open_watch(server.stub)  # never read again: its flow control fills up
    reader = await open_watch(server.stub)
    total = 300  # ~6 MB of events: more than the stalled stream's windows hold
    # Writers never wait for a watcher: were they held back by the stalled stream, this
    # loop could not finish at all (the bound only guards against that hang).
    async with asyncio.timeout(30):
        for i in range(total):
            run = (await create(server.stub, f"t{i}", metadata=big)).run
            await server.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
            if i % 50 == 0:
                # The reader keeps up while the other stream is stalled.
                await read_until(reader, await head(server))
        await read_until(reader, 2 * total)
    watchers = server.manager.watch_hub.watchers
    assert len(watchers) == 2
    assert min(w.revision for w in watchers) < 2 * total, "the stream is not stalled"
    stalled.cancel()
    reader.cancel()
    await all_closed(server)


async def test_shutdown_ends_streams_with_shutting_down_and_resume_revision(
    server: InProcessServer,
) -> None:
    call = await open_watch(server.stub)
    await create(server.stub)
    await read(call)
    server.manager.watch_hub.shutdown()
    error = await stream_error(call)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "SHUTTING_DOWN"
    assert error.metadata == {"revision": "1", "resume_revision": "2"}


# --- encode once, wire format -----------------------------------------------------------


async def test_each_event_is_encoded_once_for_all_watchers(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    real = watch_module.encode_event

    def counting(*args: Any) -> bytes:
        encoded.append(args[3])
        return real(*args)

    calls = [await open_watch(server.stub) for _ in range(5)]
    monkeypatch.setattr(watch_module, "encode_event", counting)
    await create(server.stub)
    messages = [await read(call) for call in calls]
    assert encoded == [1]
    assert len({m.SerializeToString() for m in messages}) == 1
    for call in calls:
        call.cancel()


@pytest.mark.parametrize(
    "message",
    [
        pb.WatchRunsResponse(),
        pb.WatchRunsResponse(revision=1),
        pb.WatchRunsResponse(revision=2**40 + 3, progress_only=True),
        pb.WatchRunsResponse(revision=300, end_of_initial_set=True),
        pb.WatchRunsResponse(
            revision=128,
            events=[
                pb.RunEvent(type=ADDED, revision=128, run=run_pb2.RunRecord(run_id="a" * 200)),
                pb.RunEvent(type=DELETED, prev_status=RUNNING, revision=128),
            ],
        ),
    ],
)
def test_hand_built_responses_are_byte_identical_to_protobuf(
    message: pb.WatchRunsResponse,
) -> None:
    built = encode_response(
        message.revision,
        [event.SerializeToString() for event in message.events],
        end_of_initial_set=message.end_of_initial_set,
        progress_only=message.progress_only,
    )
    assert built == message.SerializeToString()
    assert pb.WatchRunsResponse.FromString(built) == message


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"statuses": [99]}, "statuses"),
        ({"statuses": [UNSPECIFIED]}, "statuses"),
        ({"start_revision": -1}, "start_revision"),
        ({"start_revision": 1000}, "start_revision"),  # never reached by this server
        ({"progress_interval": Duration(nanos=50_000_000)}, "progress_interval"),
        ({"progress_interval": Duration(seconds=7200)}, "progress_interval"),
        ({"progress_interval": Duration(seconds=-1)}, "progress_interval"),
        ({"send_initial": True, "start_revision": 1}, "send_initial"),
        ({"thread_id": "x" * 129}, "thread_id"),
        ({"run_ids": [""]}, "run_ids"),
        ({"run_ids": [f"r{i}" for i in range(1001)]}, "run_ids"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    server: InProcessServer, fields: dict[str, Any], field: str
) -> None:
    error = await stream_error(server.stub.WatchRuns(pb.WatchRunsRequest(**fields)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.metadata == {"field": field}
    assert server.manager.watch_hub.count == 0
