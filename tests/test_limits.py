"""Every limit over gRPC, driven past its edge: RESOURCE_EXHAUSTED / LIMIT_EXCEEDED with
the limit's name in the ErrorInfo metadata, and nothing changed by the refusal.

The one exception is documented and pinned here too: a request larger than
`--max-message-bytes` is refused by gRPC itself before any handler runs, with
RESOURCE_EXHAUSTED and no ErrorInfo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from _streams import open_watch, until
from conftest import rpc_error

from runcontrol.errors import LimitExceeded, RunControlError
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Settings,
    max_message_bytes_of,
    parse_settings,
)
from runcontrol_server.domain.errors import LimitExceeded as DomainLimitExceeded
from runcontrol_server.servicer.peers import PeerSlots, peer_host

ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE
HOLD = 30.0  # deadline of the calls a test holds open (they are cancelled at its end)


async def snapshot(server: InProcessServer) -> bytes:
    """Every run and the revision: a refusal must leave both as they were."""
    listed = await server.stub.ListRuns(pb.ListRunsRequest(page_size=1000))
    return bytes(listed.SerializeToString(deterministic=True))


async def expect_limit(
    call: Awaitable[Any], limit: str, field: str | None = None
) -> RunControlError:
    error = await rpc_error(call)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error.reason == "LIMIT_EXCEEDED", error
    assert isinstance(error, LimitExceeded) and error.limit == limit, error
    expected = {"limit": limit} if field is None else {"limit": limit, "field": field}
    assert error.metadata == expected, error
    return error


async def first_message_error(call: Any) -> RunControlError:
    """The error a stream ends with before its first message."""

    async def read() -> None:
        async with asyncio.timeout(HOLD):
            await call.read()

    return await rpc_error(read())


@pytest.fixture
async def limited() -> AsyncIterator[InProcessServer]:
    """Small bounds, each reached by a handful of calls."""
    settings = Settings(
        max_payload_bytes=1000,
        max_message_bytes=80_000,
        max_active_runs_per_thread=2,
        max_stored_runs=5,
        max_watchers=3,
        max_watchers_per_peer=2,
        max_waiters=3,
        max_waiters_per_peer=2,
    )
    async with serve_in_process(settings=settings) as server:
        yield server


# --- sizes ----------------------------------------------------------------------------


async def test_message_size_is_refused_by_grpc_itself(limited: InProcessServer) -> None:
    await limited.stub.CreateRun(pb.CreateRunRequest(thread_id="t"))
    before = await snapshot(limited)
    raw = limited.channel.unary_unary("/runcontrol.v1.RunControl/CreateRun")
    just_under = pb.CreateRunRequest(thread_id="x" * 79_000).SerializeToString()
    over = pb.CreateRunRequest(thread_id="x" * 81_000).SerializeToString()
    # Under the edge the service judges the request (an id that long is invalid) ...
    error = await rpc_error(raw(just_under))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    # ... past it gRPC answers before any handler runs: no ErrorInfo, no reason.
    error = await rpc_error(raw(over))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "" and "larger than max" in error.message
    assert await snapshot(limited) == before


@pytest.mark.parametrize("field", ["metadata", "kwargs", "metadata_json", "kwargs_json"])
async def test_payload_past_its_size_is_a_limit(limited: InProcessServer, field: str) -> None:
    def create(size: int) -> pb.CreateRunRequest:
        text = "x" * size
        request = pb.CreateRunRequest(thread_id=f"{field}-{size}")
        if field.endswith("_json"):
            setattr(request, field, json.dumps({"v": text}))
        else:
            getattr(request, field).update({"v": text})
        return request

    def size(request: pb.CreateRunRequest) -> int:  # as the server counts it
        if field.endswith("_json"):
            return len(getattr(request, field).encode())
        return int(getattr(request, field).ByteSize())

    # The largest payload that fits, then one byte more (around it the sizes are 1:1).
    fits = max(n for n in range(900, 1001) if size(create(n)) <= 1000)
    assert size(create(fits)) == 1000 and size(create(fits + 1)) == 1001
    await limited.stub.CreateRun(create(fits))
    before = await snapshot(limited)
    error = await expect_limit(limited.stub.CreateRun(create(fits + 1)), "max_payload_bytes", field)
    assert "1001 bytes" in error.message
    assert await snapshot(limited) == before


# --- what the store holds -------------------------------------------------------------


async def test_enqueue_past_the_active_runs_of_a_thread(limited: InProcessServer) -> None:
    stub = limited.stub
    await stub.CreateRun(pb.CreateRunRequest(thread_id="t"))
    await stub.CreateRun(pb.CreateRunRequest(thread_id="t", multitask_strategy=ENQUEUE))
    before = await snapshot(limited)
    call = stub.CreateRun(pb.CreateRunRequest(thread_id="t", multitask_strategy=ENQUEUE))
    await expect_limit(call, "max_active_runs_per_thread")
    assert await snapshot(limited) == before


async def test_creates_past_the_stored_runs(limited: InProcessServer) -> None:
    stub = limited.stub
    first = (await stub.CreateRun(pb.CreateRunRequest(thread_id="t0"))).run
    for i in range(1, 5):
        await stub.CreateRun(pb.CreateRunRequest(thread_id=f"t{i}"))
    before = await snapshot(limited)
    await expect_limit(stub.CreateRun(pb.CreateRunRequest(thread_id="t5")), "max_stored_runs")
    assert await snapshot(limited) == before
    # Room again once a run is gone.
    await stub.CancelRun(pb.CancelRunRequest(run_id=first.run_id))
    await stub.DeleteRun(pb.DeleteRunRequest(run_id=first.run_id))
    await stub.CreateRun(pb.CreateRunRequest(thread_id="t5"))


# --- calls held open ------------------------------------------------------------------


async def test_watch_streams_per_peer(limited: InProcessServer) -> None:
    stub, hub = limited.stub, limited.manager.watch_hub
    held = [await open_watch(stub) for _ in range(2)]
    before = await snapshot(limited)
    # All calls come from 127.0.0.1: the third is past the peer's two slots.
    error = await first_message_error(stub.WatchRuns(pb.WatchRunsRequest()))
    assert isinstance(error, LimitExceeded) and error.metadata == {"limit": "max_watchers_per_peer"}
    assert hub.count == 2 and await snapshot(limited) == before
    held[0].cancel()
    await until(lambda: hub.count == 1, "the cancelled stream left")
    held[0] = await open_watch(stub)  # its slot is free again
    for call in held:
        call.cancel()
    await until(lambda: hub.count == 0, "every stream left")


async def test_watch_streams_per_server() -> None:
    settings = Settings(max_watchers=2, max_watchers_per_peer=10)
    async with serve_in_process(settings=settings) as server:
        held = [await open_watch(server.stub) for _ in range(2)]
        error = await first_message_error(server.stub.WatchRuns(pb.WatchRunsRequest()))
        assert isinstance(error, LimitExceeded) and error.metadata == {"limit": "max_watchers"}
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in held:
            call.cancel()


async def test_a_stream_refused_by_the_server_wide_bound_gives_its_peer_slot_back() -> None:
    # The peer's slot is taken before the server's: a refusal by the second must
    # release the first, or the peer would lose a slot for every refused stream.
    settings = Settings(max_watchers=2, max_watchers_per_peer=3)
    async with serve_in_process(settings=settings) as server:
        hub = server.manager.watch_hub
        held = [await open_watch(server.stub) for _ in range(2)]
        for _ in range(3):
            error = await first_message_error(server.stub.WatchRuns(pb.WatchRunsRequest()))
            assert isinstance(error, LimitExceeded)
            assert error.metadata == {"limit": "max_watchers"}
        held[0].cancel()
        await until(lambda: hub.count == 1, "the cancelled stream left")
        held[0] = await open_watch(server.stub)
        # Two streams of this peer are open: the server's bound refuses, not the peer's.
        error = await first_message_error(server.stub.WatchRuns(pb.WatchRunsRequest()))
        assert isinstance(error, LimitExceeded) and error.metadata == {"limit": "max_watchers"}
        for call in held:
            call.cancel()


async def _held_waits(server: InProcessServer, run_id: str, count: int) -> list[Any]:
    """`count` attached WaitRun calls on `run_id`, each waiting once this returns."""
    waiters = server.manager.waiters
    start = waiters.waiter_count
    calls = [
        server.stub.WaitRun(pb.WaitRunRequest(run_id=run_id, attach=True), timeout=HOLD)
        for _ in range(count)
    ]
    await until(lambda: waiters.waiter_count == start + count, f"{count} waits registered")
    return calls


async def _end(calls: list[Any]) -> None:
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_waits_per_peer(limited: InProcessServer) -> None:
    run = (await limited.stub.CreateRun(pb.CreateRunRequest(thread_id="t"))).run
    held = await _held_waits(limited, run.run_id, 2)
    before = await snapshot(limited)
    # Refused, though attached: its caller never waited, so the run is not cancelled.
    call = limited.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id, attach=True))
    await expect_limit(call, "max_waiters_per_peer")
    assert await snapshot(limited) == before
    # Ending the held waits (attached: that cancels the run) frees the slots.
    await _end(held)
    await until(lambda: limited.manager.waiters.waiter_count == 0, "the waits left")
    done = await limited.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id), timeout=HOLD)
    assert done.done and done.run.status == run_pb2.RUN_STATUS_INTERRUPTED


async def test_waits_per_server() -> None:
    settings = Settings(max_waiters=2, max_waiters_per_peer=10)
    async with serve_in_process(settings=settings) as server:
        run = (await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t"))).run
        held = await _held_waits(server, run.run_id, 2)
        before = await snapshot(server)
        call = server.stub.WaitRun(pb.WaitRunRequest(run_id=run.run_id, attach=True))
        await expect_limit(call, "max_waiters")
        assert await snapshot(server) == before
        await _end(held)


# --- the settings ---------------------------------------------------------------------


def test_message_size_follows_the_payload_size_unless_set() -> None:
    assert max_message_bytes_of(Settings()) == DEFAULT_MAX_MESSAGE_BYTES
    three_mib = Settings(max_payload_bytes=3 << 20)
    assert max_message_bytes_of(three_mib) == 2 * (3 << 20) + (64 << 10)
    assert max_message_bytes_of(Settings(max_message_bytes=9 << 20)) == 9 << 20


def test_a_message_size_too_small_for_the_payloads_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--max-message-bytes", "100000"], {})
    assert exited.value.code == 2
    assert "lower --max-payload-bytes too" in capsys.readouterr().err
    settings = parse_settings(["--max-message-bytes", "100000", "--max-payload-bytes", "10000"], {})
    assert max_message_bytes_of(settings) == 100_000


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.5:41234", "10.0.0.5"),
        ("ipv6:[::1]:5000", "[::1]"),
        ("ipv6:[2001:db8::1]:443", "[2001:db8::1]"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
        ("", ""),
    ],
)
def test_a_peer_is_its_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_peer_slots_are_released_on_every_exit() -> None:
    slots = PeerSlots("max_x_per_peer", 1, "calls")
    with pytest.raises(RuntimeError), slots.held("ipv4:1.2.3.4:1"):
        raise RuntimeError("the call failed")
    with slots.held("ipv4:1.2.3.4:2"):  # another port, the same host: its one slot
        with pytest.raises(DomainLimitExceeded) as raised, slots.held("ipv4:1.2.3.4:3"):
            pass
        assert raised.value.limit == "max_x_per_peer"
        with slots.held("ipv4:5.6.7.8:1"):  # another host has its own
            assert slots.open_calls("ipv4:5.6.7.8:9") == 1
    assert slots.open_calls("ipv4:1.2.3.4:1") == 0
