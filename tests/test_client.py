"""The Python client over the wire: typed values, typed errors, handles, retries."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from _streams import until

import runcontrol
from runcontrol import (
    AlreadyClaimed,
    AsyncClient,
    Bookmark,
    CancelAction,
    Client,
    InvalidArgument,
    InvalidTransition,
    MultitaskStrategy,
    RequestIdReused,
    RevisionMismatch,
    RunActive,
    RunNotFound,
    RunStatus,
    ThreadBusy,
    WatchEvent,
)
from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc


@pytest.fixture
async def client(server: InProcessServer) -> Any:
    async with AsyncClient(server.address) as connected:
        yield connected


async def test_create_get_refresh_and_typed_values(client: AsyncClient) -> None:
    handle = await client.create_run(
        "t1",
        assistant_id="agent",
        metadata={"user": "ada", "n": 2},
        kwargs={"q": [1, 2]},
        run_timeout=60,
    )
    run = handle.run
    assert (run.thread_id, run.assistant_id, run.status) == ("t1", "agent", RunStatus.PENDING)
    assert run.metadata == {"user": "ada", "n": 2}
    assert run.kwargs == {"q": [1, 2]}
    assert run.request_id is not None  # generated, so the retry policy may repeat CreateRun
    assert run.deadline is not None
    assert run.created_at.tzinfo is not None
    assert (run.deadline - run.created_at).total_seconds() == 60
    assert handle.creation is not None
    assert handle.creation.replayed is False
    fetched = await client.get_run(run.run_id)
    assert fetched.run == run
    assert fetched.creation is None
    assert await handle.refresh() == run


async def test_worker_lifecycle_through_the_handle(client: AsyncClient) -> None:
    handle = await client.create_run("t1")
    assert await handle.claim("w1") is True
    assert handle.run.status is RunStatus.RUNNING
    assert await handle.claim("w1") is False  # a repeat, not a new revision
    with pytest.raises(AlreadyClaimed) as claimed:
        await (await client.get_run(handle.run_id)).claim("w2")
    assert claimed.value.worker_id == "w1"
    assert await handle.set_status(RunStatus.ERROR, error="boom", worker_id="w1")
    assert (handle.run.status, handle.run.error) == (RunStatus.ERROR, "boom")
    assert await handle.cancel() is False  # finished: nothing to cancel
    await handle.delete()
    with pytest.raises(RunNotFound) as missing:
        await handle.refresh()
    assert missing.value.run_id == handle.run_id
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


async def test_strategies_and_typed_errors(client: AsyncClient) -> None:
    first = await client.create_run("t1")
    with pytest.raises(ThreadBusy) as busy:
        await client.create_run("t1")
    assert busy.value.inflight_run_ids == (first.run_id,)
    assert busy.value.thread_id == "t1"
    queued = await client.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)
    assert queued.creation is not None
    assert queued.creation.queued_behind_run_ids == (first.run_id,)
    with pytest.raises(InvalidTransition) as early:
        await queued.claim("w")
    assert early.value.queued_behind == (first.run_id,)
    rollback = await client.create_run("t1", multitask_strategy=MultitaskStrategy.ROLLBACK)
    assert rollback.creation is not None
    interrupted = rollback.creation.interrupted_runs
    assert [r.run_id for r in interrupted] == [first.run_id, queued.run_id]
    assert {r.cancel_action for r in interrupted} == {CancelAction.ROLLBACK}
    with pytest.raises(RunActive):
        await rollback.delete()
    stale = rollback.run.mod_revision
    await rollback.claim("w")
    with pytest.raises(RevisionMismatch) as mismatch:
        await rollback.set_status(RunStatus.SUCCESS, expected_mod_revision=stale)
    assert mismatch.value.mod_revision == rollback.run.mod_revision
    with pytest.raises(InvalidArgument) as bad:
        await client.create_run("")
    assert bad.value.field == "thread_id"


async def test_request_id_replay_and_reuse(client: AsyncClient) -> None:
    first = await client.create_run("t1", request_id="order-42")
    again = await client.create_run("t1", request_id="order-42")
    assert again.run == first.run
    assert again.creation is not None
    assert again.creation.replayed
    with pytest.raises(RequestIdReused) as reused:
        await client.create_run("t2", request_id="order-42")
    assert reused.value.request_id == "order-42"


async def test_list_runs_pages_through_everything(client: AsyncClient) -> None:
    created = []
    for i in range(12):
        handle = await client.create_run(f"t{i}")
        created.append(handle.run_id)
    listed = [run.run_id async for run in client.list_runs(page_size=5)]
    assert listed == created[::-1]
    page = await client.list_runs_page(page_size=5, statuses=[RunStatus.PENDING])
    assert len(page.runs) == 5
    assert page.next_page_token
    assert page.revision == 12
    inflight = await client.has_inflight("t3")
    assert inflight.has_inflight and inflight  # truthy exactly when runs are active
    assert inflight.run_ids == (created[3],)
    assert not await client.has_inflight("no-such-thread")


async def test_sync_client_has_the_same_api(server: InProcessServer) -> None:
    def work() -> tuple[RunStatus, bool, tuple[str, ...]]:
        with Client(server.address) as sync:
            handle = sync.create_run("sync-thread")
            handle.claim("w")
            handle.set_status(RunStatus.SUCCESS)
            sync.create_run("sync-thread-2")
            with pytest.raises(ThreadBusy):
                sync.create_run("sync-thread-2")
            listed = tuple(r.run_id for r in sync.list_runs(thread_id="sync-thread"))
            return handle.refresh().status, handle.cancel(), listed

    status, cancelled, listed = await asyncio.to_thread(work)
    assert (status, cancelled, len(listed)) == (RunStatus.SUCCESS, False, 1)


async def test_sync_client_watches_like_the_async_one(server: InProcessServer) -> None:
    """The blocking watch: an initial set, live events in order, a run's own watch,
    and leaving the loop ends the stream (no stream left on the server)."""
    created = asyncio.Event()
    loop = asyncio.get_running_loop()

    def work() -> list[tuple[str, str, RunStatus]]:
        seen: list[tuple[str, str, RunStatus]] = []
        with Client(server.address) as sync:
            first = sync.create_run("watched")
            for item in sync.watch(thread_id="watched", send_initial=True):
                if isinstance(item, Bookmark) and item.end_of_initial_set:
                    loop.call_soon_threadsafe(created.set)  # now make a live change
                elif isinstance(item, WatchEvent):
                    seen.append((item.type.name, item.run.run_id, item.run.status))
                    if item.run.status is RunStatus.RUNNING:
                        break
            events = first.watch(send_initial=True)
            initial = next(events)
            events.close()
            assert isinstance(initial, WatchEvent) and initial.run.run_id == first.run_id
        return seen

    async def claim_when_listed() -> str:
        await created.wait()
        async with AsyncClient(server.address) as reader:
            (run,) = [r async for r in reader.list_runs(thread_id="watched")]
        await server.stub.SetRunStatus(
            pb.SetRunStatusRequest(run_id=run.run_id, status=2, worker_id="w")
        )
        return run.run_id

    async with asyncio.timeout(30):
        seen, run_id = await asyncio.gather(asyncio.to_thread(work), claim_when_listed())
    assert seen == [("ADDED", run_id, RunStatus.PENDING), ("MODIFIED", run_id, RunStatus.RUNNING)]
    await until(lambda: server.manager.watch_hub.count == 0, "the watches ended")


class _FlakyGetRun(run_control_pb2_grpc.RunControlServicer):
    """Answers UNAVAILABLE to the first two GetRun calls, then a record."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        self.calls += 1
        if self.calls <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        response = pb.GetRunResponse()
        response.run.run_id = request.run_id
        response.run.status = 1
        response.run.on_disconnect = 1
        response.run.multitask_strategy = 1
        response.run.cancel_action = 1
        response.run.created_at.GetCurrentTime()
        response.run.updated_at.GetCurrentTime()
        return response

    async def DeleteRun(self, request: pb.DeleteRunRequest, context: Any) -> pb.DeleteRunResponse:
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        raise AssertionError("unreachable")


async def test_unavailable_is_retried_only_on_safe_calls() -> None:
    flaky = _FlakyGetRun()
    server = grpc.aio.server()
    run_control_pb2_grpc.add_RunControlServicer_to_server(flaky, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            run = await client.fetch_run("r1")
            assert (run.run_id, flaky.calls) == ("r1", 3)
            flaky.calls = 0
            with pytest.raises(runcontrol.RunControlError) as failed:
                await client.delete_run("r1")
            assert failed.value.code is grpc.StatusCode.UNAVAILABLE
            assert flaky.calls == 1  # DeleteRun is not repeated
        async with AsyncClient(f"127.0.0.1:{port}", retry=False) as no_retry:
            flaky.calls = 0
            with pytest.raises(runcontrol.RunControlError):
                await no_retry.fetch_run("r1")
            assert flaky.calls == 1
    finally:
        await server.stop(0)


def test_client_needs_exactly_one_of_target_or_channel() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AsyncClient()
    with pytest.raises(ValueError, match="exactly one"):
        Client()


async def test_a_deadline_beyond_what_grpc_holds_means_no_deadline(
    server: InProcessServer,
) -> None:
    # grpc's nanosecond deadline overflows past ~7e9 s from now and the call would fail
    # at once with DEADLINE_EXCEEDED; the client hands grpc at most MAX_DEADLINE.
    async with AsyncClient(server.address, timeout=1e12) as client:
        handle = await client.create_run("far")
        assert (await client.fetch_run(handle.run_id, timeout=1e300)).run_id == handle.run_id
    with runcontrol.Client(server.address, timeout=1e12) as blocking:
        fetched = await asyncio.to_thread(blocking.fetch_run, handle.run_id)
        assert fetched.run_id == handle.run_id


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda c: c.create_run("t", run_timeout=1e20), "run_timeout"),
        (lambda c: c.create_run("t", run_timeout=float("nan")), "run_timeout"),
        (
            lambda c: c.set_status("r", RunStatus.RUNNING, worker_id="w", lease_ttl=float("inf")),
            "lease_ttl",
        ),
        (lambda c: c.wait_run("r", timeout=float("nan")), "timeout"),
    ],
)
async def test_durations_a_protobuf_duration_cannot_hold_are_refused_before_sending(
    call: Any, name: str
) -> None:
    # No server at that address: the error must come before any network call.
    async with AsyncClient("127.0.0.1:1", timeout=0.5, retry=False) as client:
        with pytest.raises(ValueError, match=name):
            await call(client)
