"""The client's resuming watch over the wire: server restarts, compaction, clean ends.

"Tested by restarting the server under a live iterator": the iterator keeps running
while the server it reads from is stopped and another one is started on the same
address over the same store; it must deliver every change exactly once, in revision
order, with no gap.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from _streams import until
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from runcontrol import (
    AsyncClient,
    Bookmark,
    EventType,
    Resynced,
    RunControlError,
    RunStatus,
    WatchEvent,
    WatchItem,
)
from runcontrol._watch import resuming_watch
from runcontrol.errors import ERROR_DOMAIN, STATUS_DETAILS_KEY
from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc, run_pb2
from runcontrol_server import domain
from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings
from runcontrol_server.domain import RunManager
from runcontrol_server.stores.memory import InMemoryRunStore

# Reconnect quickly after the server comes back (gRPC's default first backoff is 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def drain(
    watch: AsyncIterator[WatchItem], seconds: float, items: list[WatchItem] | None = None
) -> None:
    """Iterate until the watch raises (it must within `seconds`), keeping the items."""
    async with asyncio.timeout(seconds):
        async for item in watch:
            if items is not None:
                items.append(item)


class Collector:
    """Iterates a watch in a task, keeping every item (the test reads `items`)."""

    def __init__(self, watch: AsyncIterator[WatchItem]) -> None:
        self.items: list[WatchItem] = []
        self._watch = watch
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for item in self._watch:
            self.items.append(item)

    def events(self) -> list[WatchEvent]:
        return [item for item in self.items if isinstance(item, WatchEvent)]

    async def wait_for_revision(self, revision: int) -> None:
        def reached() -> bool:
            if self.task.done():
                self.task.result()  # surface the iterator's error
            return any(getattr(item, "revision", 0) >= revision for item in self.items)

        await until(reached, f"the watch delivered revision {revision}")

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def start_server(address: str, store: InMemoryRunStore) -> RunControlServer:
    # A stopped server closes its manager (watch hub, waiters, janitor): the next one
    # gets a fresh manager over the same store, as a restarted process over a durable
    # store would.
    server = RunControlServer(Settings(listen=address), manager=RunManager(store))
    await server.start()
    return server


async def test_watch_survives_a_server_restart_without_gap_or_duplicate() -> None:
    store = InMemoryRunStore()
    address = f"127.0.0.1:{free_port()}"
    first = await start_server(address, store)
    second: RunControlServer | None = None
    try:
        async with AsyncClient(address, options=FAST_RECONNECT) as client:
            watch = Collector(client.watch())
            await until(lambda: first.manager.watch_hub.count == 1, "the watch is open")
            a = await client.create_run("a")  # 1
            await a.claim("w")  # 2
            b = await client.create_run("b")  # 3
            await watch.wait_for_revision(3)

            await first.stop(grace=0)
            # Changes while no server is up: the resumed stream must replay them.
            manager = RunManager(store)
            await manager.set_status(a.run_id, domain.RunStatus.SUCCESS, worker_id="w")  # 4
            await manager.create_run("c")  # 5
            second = RunControlServer(Settings(listen=address), manager=manager)
            await second.start()
            await b.cancel()  # 6, through the restarted server
            await watch.wait_for_revision(6)
            await client.delete_run(a.run_id)  # 7
            await watch.wait_for_revision(7)
            await watch.stop()
    finally:
        await first.stop(grace=0)
        if second is not None:
            await second.stop(grace=0)

    events = watch.events()
    assert [e.revision for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert [(e.type, e.run.thread_id, e.run.status) for e in events] == [
        (EventType.ADDED, "a", RunStatus.PENDING),
        (EventType.MODIFIED, "a", RunStatus.RUNNING),
        (EventType.ADDED, "b", RunStatus.PENDING),
        (EventType.MODIFIED, "a", RunStatus.SUCCESS),
        (EventType.ADDED, "c", RunStatus.PENDING),
        (EventType.MODIFIED, "b", RunStatus.INTERRUPTED),
        (EventType.DELETED, "a", RunStatus.SUCCESS),
    ]
    assert events[3].prev_status is RunStatus.RUNNING
    assert not [item for item in watch.items if isinstance(item, Resynced)]


async def test_a_server_that_lost_its_state_is_re_listed_not_an_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    first = await start_server(address, InMemoryRunStore())
    second: RunControlServer | None = None
    try:
        async with AsyncClient(address, options=FAST_RECONNECT) as client:
            watch = Collector(client.watch())
            await until(lambda: first.manager.watch_hub.count == 1, "the watch is open")
            for thread in ("a", "b", "c"):
                await client.create_run(thread)  # 1..3
            await watch.wait_for_revision(3)
            await first.stop(grace=0)
            # A new process with a new, empty in-memory store: revision 4 never comes.
            second = await start_server(address, InMemoryRunStore())
            fresh = await client.create_run("fresh")  # revision 1 of the new store
            await until(
                lambda: any(isinstance(i, Resynced) for i in watch.items),
                "the watch re-listed",
            )
            await watch.stop()
    finally:
        await first.stop(grace=0)
        if second is not None:
            await second.stop(grace=0)
    (resynced,) = [item for item in watch.items if isinstance(item, Resynced)]
    assert resynced.reason == "server restarted; state was in memory"
    # The new server's state, complete (the create may land before or after the re-list).
    assert [r.run_id for r in resynced.runs] in ([], [fresh.run_id])


async def test_watch_from_now_that_saw_nothing_loses_nothing_across_a_restart() -> None:
    """A watch "from now" is pinned to a revision before its first stream opens, so one
    that has received nothing yet does not lose the changes made while it reconnects —
    even when the stop cuts the stream before SHUTTING_DOWN (and its resume revision)
    reaches the client."""
    store = InMemoryRunStore()
    address = f"127.0.0.1:{free_port()}"
    first = await start_server(address, store)
    await first.manager.create_run("before")  # 1: before the watch, never delivered
    second: RunControlServer | None = None
    try:
        async with AsyncClient(address, options=FAST_RECONNECT) as client:
            watch = Collector(client.watch())
            await until(lambda: first.manager.watch_hub.count == 1, "the watch is open")
            await first.stop(grace=0)
            manager = RunManager(store)
            await manager.create_run("during")  # 2: made before the watch reconnects
            second = RunControlServer(Settings(listen=address), manager=manager)
            await second.start()
            await client.create_run("after")  # 3
            await watch.wait_for_revision(3)
            await watch.stop()
    finally:
        await first.stop(grace=0)
        if second is not None:
            await second.stop(grace=0)
    assert [(e.revision, e.run.thread_id) for e in watch.events()] == [(2, "during"), (3, "after")]


async def test_watch_that_fell_off_history_resyncs_with_the_complete_set() -> None:
    manager = RunManager(InMemoryRunStore(history_limit=8))
    async with (
        serve_in_process(manager=manager) as server,
        AsyncClient(server.address) as client,
    ):
        kept = await client.create_run("keep-1")  # 1
        watch = aiter(client.watch(statuses=[RunStatus.PENDING, RunStatus.RUNNING]))
        pending = asyncio.ensure_future(anext(watch))
        await until(lambda: manager.watch_hub.count == 1, "the watch is open")
        await client.create_run("keep-2")  # 2
        async with asyncio.timeout(10):
            first = await pending
        assert isinstance(first, WatchEvent)
        assert (first.revision, first.run.thread_id) == (2, "keep-2")

        # The consumer pauses. Twelve changes in one event-loop step (the in-memory
        # store does not yield), so the stream's handler cannot keep up: its cursor
        # leaves the 8-entry history and the server ends it with REVISION_COMPACTED.
        created = [await manager.create_run(f"t{i}") for i in range(6)]  # 3..8
        for outcome in created[:3]:
            await manager.set_status(outcome.run.run_id, domain.RunStatus.RUNNING, worker_id="w")
        await manager.cancel_run(created[3].run.run_id)  # 12: leaves the matching set
        await manager.set_status(kept.run_id, domain.RunStatus.RUNNING, worker_id="w")  # 13
        await manager.set_status(kept.run_id, domain.RunStatus.SUCCESS, worker_id="w")  # 14
        await until(
            lambda: manager.feed.history.compact_revision > 2, "the feed cache dropped 1..2"
        )

        async with asyncio.timeout(10):
            resynced = await anext(watch)
        assert isinstance(resynced, Resynced)
        assert resynced.revision == 14
        current = {
            run.run_id: run.mod_revision
            async for run in client.list_runs(statuses=[RunStatus.PENDING, RunStatus.RUNNING])
        }
        assert {run.run_id: run.mod_revision for run in resynced.runs} == current
        assert len(current) == 6  # keep-2, t0..t2 running, t4, t5 (t3 cancelled, keep-1 done)

        # Events continue right after the snapshot: nothing it already holds comes again.
        late = await client.create_run("late")  # 15
        await client.cancel_run(created[4].run.run_id)  # 16: DELETED from the filtered view
        async with asyncio.timeout(10):
            after = [await anext(watch), await anext(watch)]
        assert [(type(i), getattr(i, "revision", None)) for i in after] == [
            (WatchEvent, 15),
            (WatchEvent, 16),
        ]
        assert isinstance(after[0], WatchEvent)
        assert isinstance(after[1], WatchEvent)
        assert after[0].run.run_id == late.run_id
        assert (after[1].type, after[1].run.run_id) == (EventType.DELETED, created[4].run.run_id)
        await watch.aclose()  # type: ignore[attr-defined]
    await until(lambda: manager.watch_hub.count == 0, "the stream was closed")


# --- clean ends and broken initial sets: servers that misbehave on purpose ---------------


class _ScriptedWatch(run_control_pb2_grpc.RunControlServicer):
    """WatchRuns answers from a script: one entry per call, each a list of messages
    followed by an optional abort code. Records every request."""

    def __init__(
        self, script: list[tuple[list[pb.WatchRunsResponse], grpc.StatusCode | None]]
    ) -> None:
        self.script = script
        self.requests: list[pb.WatchRunsRequest] = []

    async def WatchRuns(
        self, request: pb.WatchRunsRequest, context: Any
    ) -> AsyncIterator[pb.WatchRunsResponse]:
        self.requests.append(request)
        messages, code = self.script[min(len(self.requests), len(self.script)) - 1]
        for message in messages:
            yield message
        if code is not None:
            await context.abort(code, "scripted")

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        return pb.ListRunsResponse(revision=4)  # pins a watch "from now" at revision 5


async def _serve(servicer: _ScriptedWatch) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    run_control_pb2_grpc.add_RunControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _record(run_id: str, revision: int) -> run_pb2.RunRecord:
    record = run_pb2.RunRecord(
        run_id=run_id,
        thread_id=run_id,
        status=run_pb2.RUN_STATUS_PENDING,
        on_disconnect=run_pb2.DISCONNECT_MODE_CANCEL,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT,
        cancel_action=run_pb2.CANCEL_ACTION_INTERRUPT,
        create_revision=revision,
        mod_revision=revision,
    )
    record.created_at.GetCurrentTime()
    record.updated_at.GetCurrentTime()
    return record


def _added(run_id: str, revision: int) -> pb.RunEvent:
    return pb.RunEvent(
        type=run_pb2.EVENT_TYPE_ADDED, run=_record(run_id, revision), revision=revision
    )


class Sleeps:
    """Stands in for `asyncio.sleep` in the backoff: records each delay, waits for none.

    `stop_after` ends the watch (with `Stopped`) at that many delays.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.delays: list[float] = []
        self._stop_after = stop_after

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) == self._stop_after:
            raise Stopped


class Stopped(Exception):
    """Raised by `Sleeps` to end a watch that would reconnect forever."""


def scripted_watch(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
    request: pb.WatchRunsRequest,
    sleeps: Sleeps,
    **options: Any,
) -> AsyncIterator[WatchItem]:
    return resuming_watch(lambda attempt: stub.WatchRuns(attempt), request, sleep=sleeps, **options)


async def test_client_watch_pins_from_now_and_gives_up_after_max_reconnects() -> None:
    servicer = _ScriptedWatch([([], None)])  # every stream ends at once, status OK
    server, address = await _serve(servicer)
    try:
        async with AsyncClient(address) as client:
            with pytest.raises(RunControlError) as ended:
                await drain(client.watch(max_reconnects=0), 10)
    finally:
        await server.stop(0)
    assert ended.value.code is grpc.StatusCode.UNAVAILABLE
    assert "ended" in ended.value.message
    # Pinned before the first stream (ListRuns said 4), and no reconnect was allowed.
    assert [r.start_revision for r in servicer.requests] == [5]


async def test_streams_ended_cleanly_reconnect_with_backoff_not_in_a_hot_loop() -> None:
    servicer = _ScriptedWatch([([], None)])  # every stream ends at once, status OK
    server, address = await _serve(servicer)
    sleeps = Sleeps()
    pins = 0

    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)

            async def current_revision() -> int:
                nonlocal pins
                pins += 1
                return (await stub.ListRuns(pb.ListRunsRequest())).revision

            watch = scripted_watch(
                stub,
                pb.WatchRunsRequest(),
                sleeps,
                max_reconnects=3,
                current_revision=current_revision,
            )
            with pytest.raises(RunControlError) as ended:
                await drain(watch, 10)
    finally:
        await server.stop(0)
    assert ended.value.code is grpc.StatusCode.UNAVAILABLE
    assert "ended" in ended.value.message
    assert len(servicer.requests) == 4  # the first stream and three reconnects
    # Pinned once before the first stream (ListRuns said 4): every attempt asks for 5.
    assert pins == 1
    assert [r.start_revision for r in servicer.requests] == [5, 5, 5, 5]
    # One backoff before each reconnect, doubling from the default 0.1 s; none after
    # the last stream: the fourth failure in a row ends the watch instead.
    assert sleeps.delays == [0.1, 0.2, 0.4]


async def test_unbounded_watch_backs_off_against_a_server_closing_every_stream() -> None:
    servicer = _ScriptedWatch([([], None)])
    server, address = await _serve(servicer)
    sleeps = Sleeps(stop_after=6)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            watch = scripted_watch(
                stub, pb.WatchRunsRequest(), sleeps, initial_backoff=0.05, max_backoff=0.1
            )
            with pytest.raises(Stopped):
                await drain(watch, 10)
    finally:
        await server.stop(0)
    # Every stream is followed by one backoff (no hot loop), capped at max_backoff.
    assert sleeps.delays == [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert len(servicer.requests) == len(sleeps.delays)


async def test_a_message_resets_the_backoff_and_the_count_of_failures_in_a_row() -> None:
    servicer = _ScriptedWatch(
        [
            ([], grpc.StatusCode.UNAVAILABLE),
            ([], grpc.StatusCode.UNAVAILABLE),
            ([pb.WatchRunsResponse(revision=5, events=[_added("r5", 5)])], None),
            ([], grpc.StatusCode.UNAVAILABLE),
            ([], grpc.StatusCode.INTERNAL),
        ]
    )
    server, address = await _serve(servicer)
    sleeps = Sleeps()
    items: list[WatchItem] = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            watch = scripted_watch(
                stub, pb.WatchRunsRequest(start_revision=3), sleeps, max_reconnects=2
            )
            with pytest.raises(RunControlError) as ended:
                await drain(watch, 10, items)
    finally:
        await server.stop(0)
    # Four interruptions, but never more than two in a row: the watch ends with the
    # error that is not retried, not with UNAVAILABLE.
    assert ended.value.code is grpc.StatusCode.INTERNAL
    assert sleeps.delays == [0.1, 0.2, 0.1, 0.2]
    assert [r.start_revision for r in servicer.requests] == [3, 3, 3, 6, 6]
    assert [(type(i), getattr(i, "revision", None)) for i in items] == [(WatchEvent, 5)]


async def test_initial_set_cut_off_half_way_is_completed_by_a_resync() -> None:
    servicer = _ScriptedWatch(
        [
            (
                [pb.WatchRunsResponse(revision=5, events=[_added("r1", 2)])],
                grpc.StatusCode.UNAVAILABLE,
            ),
            (
                [
                    pb.WatchRunsResponse(revision=6, events=[_added("r1", 2), _added("r2", 6)]),
                    pb.WatchRunsResponse(revision=6, end_of_initial_set=True),
                    pb.WatchRunsResponse(revision=7, events=[_added("r3", 7)]),
                ],
                grpc.StatusCode.UNAVAILABLE,
            ),
            ([], grpc.StatusCode.INTERNAL),
        ]
    )
    server, address = await _serve(servicer)
    items: list[WatchItem] = []
    try:
        async with AsyncClient(address) as client:
            with pytest.raises(RunControlError) as ended:
                await drain(client.watch(send_initial=True, bookmarks=True), 10, items)
    finally:
        await server.stop(0)
    assert ended.value.code is grpc.StatusCode.INTERNAL  # not retried
    assert isinstance(items[0], WatchEvent)
    assert items[0].run.run_id == "r1"
    assert isinstance(items[1], Resynced)
    assert (items[1].revision, [r.run_id for r in items[1].runs]) == (6, ["r1", "r2"])
    assert isinstance(items[2], WatchEvent)
    assert (items[2].revision, items[2].run.run_id) == (7, "r3")
    assert len(items) == 3
    assert [(r.send_initial, r.start_revision) for r in servicer.requests] == [
        (True, 0),
        (True, 0),  # the resync's re-list
        (False, 8),  # resumed after the last delivered revision
    ]
    assert not [i for i in items if isinstance(i, Bookmark)]


class _FirstStreamFails(_ScriptedWatch):
    """A scripted WatchRuns whose first stream, after its scripted messages, ends the way
    the server ends one: `code` with an ErrorInfo of `reason` and `metadata`."""

    def __init__(
        self,
        script: list[tuple[list[pb.WatchRunsResponse], grpc.StatusCode | None]],
        code: grpc.StatusCode,
        reason: str,
        metadata: dict[str, str],
    ) -> None:
        super().__init__(script)
        self.code, self.reason, self.metadata = code, reason, metadata

    async def WatchRuns(
        self, request: pb.WatchRunsRequest, context: Any
    ) -> AsyncIterator[pb.WatchRunsResponse]:
        first = not self.requests
        async for message in super().WatchRuns(request, context):
            yield message
        if first:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(
                code=self.code.value[0], message=self.reason, details=[detail]
            )
            context.set_trailing_metadata(((STATUS_DETAILS_KEY, status.SerializeToString()),))
            await context.abort(self.code, self.reason)


async def test_a_compacted_position_is_re_listed_at_once_and_delivered_whole() -> None:
    servicer = _FirstStreamFails(
        [
            ([pb.WatchRunsResponse(revision=5, events=[_added("r5", 5)])], None),
            (
                [
                    pb.WatchRunsResponse(revision=9, events=[_added("r1", 1)]),
                    pb.WatchRunsResponse(revision=9, events=[_added("r9", 9)]),
                    pb.WatchRunsResponse(revision=9, end_of_initial_set=True),
                    pb.WatchRunsResponse(revision=10, events=[_added("r10", 10)]),
                ],
                grpc.StatusCode.INTERNAL,
            ),
        ],
        grpc.StatusCode.OUT_OF_RANGE,
        "REVISION_COMPACTED",
        {"compact_revision": "7"},
    )
    server, address = await _serve(servicer)
    sleeps = Sleeps()
    items: list[WatchItem] = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            watch = scripted_watch(stub, pb.WatchRunsRequest(start_revision=3), sleeps)
            with pytest.raises(RunControlError) as ended:
                await drain(watch, 10, items)
    finally:
        await server.stop(0)
    assert ended.value.code is grpc.StatusCode.INTERNAL
    assert [(r.send_initial, r.start_revision) for r in servicer.requests] == [
        (False, 3),
        (True, 0),  # the re-list, at once: nothing to back off from
    ]
    assert sleeps.delays == []
    first, resynced, last = items
    assert isinstance(first, WatchEvent) and first.revision == 5
    # The snapshot is held back until complete, then handed over whole.
    assert isinstance(resynced, Resynced)
    assert (resynced.revision, [r.run_id for r in resynced.runs]) == (9, ["r1", "r9"])
    assert resynced.reason == "the watch fell behind the server's history"
    assert isinstance(last, WatchEvent) and last.revision == 10


@pytest.mark.parametrize("bookmarks", [False, True])
async def test_progress_and_shutting_down_move_the_position_bookmarks_only_when_asked(
    bookmarks: bool,
) -> None:
    # A watch "from now" with nothing to pin it: the draining server's resume revision
    # anchors it, then a progress message moves it on.
    servicer = _FirstStreamFails(
        [
            ([], None),
            ([pb.WatchRunsResponse(revision=9, progress_only=True)], grpc.StatusCode.UNAVAILABLE),
            ([], grpc.StatusCode.INTERNAL),
        ],
        grpc.StatusCode.UNAVAILABLE,
        "SHUTTING_DOWN",
        {"revision": "7", "resume_revision": "8"},
    )
    server, address = await _serve(servicer)
    sleeps = Sleeps()
    items: list[WatchItem] = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            watch = scripted_watch(stub, pb.WatchRunsRequest(), sleeps, bookmarks=bookmarks)
            with pytest.raises(RunControlError) as ended:
                await drain(watch, 10, items)
    finally:
        await server.stop(0)
    assert ended.value.code is grpc.StatusCode.INTERNAL
    assert [r.start_revision for r in servicer.requests] == [0, 8, 10]
    assert items == ([Bookmark(9)] if bookmarks else [])
