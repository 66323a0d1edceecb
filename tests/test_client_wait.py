"""Run handles over the wire: `watch()` of one run, `wait()` with timeouts and attach."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _streams import until

from runcontrol import (
    AsyncClient,
    CancelAction,
    Client,
    DisconnectMode,
    EventType,
    RunStatus,
    WatchEvent,
)
from runcontrol.testing import InProcessServer

BOUND = 10.0  # a guard against hangs, never a measurement


@pytest.fixture
async def client(server: InProcessServer) -> Any:
    async with AsyncClient(server.address) as connected:
        yield connected


async def test_handle_watch_sees_only_its_own_run(
    server: InProcessServer, client: AsyncClient
) -> None:
    mine = await client.create_run("mine")
    other = await client.create_run("other")
    events: list[WatchEvent] = []

    async def collect() -> None:
        async for item in mine.watch():
            assert isinstance(item, WatchEvent)
            events.append(item)
            if item.run.is_terminal:
                return

    task = asyncio.ensure_future(collect())
    await until(lambda: server.manager.watch_hub.count == 1, "the watch is open")
    await other.claim("w")
    await mine.claim("w")
    await other.set_status(RunStatus.SUCCESS, worker_id="w")
    await mine.set_status(RunStatus.ERROR, error="boom", worker_id="w")
    await client.create_run("mine", metadata={"next": True})  # another run, same thread
    async with asyncio.timeout(10):
        await task
    assert [(e.type, e.run.run_id, e.run.status) for e in events] == [
        (EventType.MODIFIED, mine.run_id, RunStatus.RUNNING),
        (EventType.MODIFIED, mine.run_id, RunStatus.ERROR),
    ]
    assert events[1].prev_status is RunStatus.RUNNING
    await until(lambda: server.manager.watch_hub.count == 0, "the stream was closed")


async def test_handle_watch_with_initial_set_starts_from_the_current_record(
    client: AsyncClient,
) -> None:
    handle = await client.create_run("t1")
    await handle.claim("w")
    watch = aiter(handle.watch(send_initial=True))
    async with asyncio.timeout(10):
        first, marker = await anext(watch), await anext(watch)
    assert isinstance(first, WatchEvent)
    assert (first.type, first.run) == (EventType.ADDED, handle.run)
    assert getattr(marker, "end_of_initial_set", False)
    await watch.aclose()  # type: ignore[attr-defined]


async def test_wait_returns_true_when_another_task_finishes_the_run(
    server: InProcessServer, client: AsyncClient
) -> None:
    handle = await client.create_run("t1")
    waiting = asyncio.ensure_future(handle.wait(timeout=10))
    await until(lambda: server.manager.waiters.waiter_count == 1, "the wait is registered")
    worker = await client.get_run(handle.run_id)
    await worker.claim("w")
    await worker.set_status(RunStatus.SUCCESS, worker_id="w")
    async with asyncio.timeout(10):
        assert await waiting is True
    assert handle.run.status is RunStatus.SUCCESS
    assert handle.run == worker.run


async def test_wait_returns_false_on_timeout_with_the_current_record(
    server: InProcessServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = server.manager
    waits: list[float | None] = []
    wait_run = manager.wait_run

    async def recorded(run_id: str, **options: Any) -> Any:
        waits.append(options["timeout"])  # the wait the server was asked for
        return await wait_run(run_id, **options)

    monkeypatch.setattr(manager, "wait_run", recorded)
    handle = await client.create_run("t1")
    await (await client.get_run(handle.run_id)).claim("w")
    # Nothing ends the run: only the timeout the server was given can end this wait.
    async with asyncio.timeout(BOUND):
        assert await handle.wait(timeout=0.2) is False
    assert waits == [0.2]
    assert handle.run.status is RunStatus.RUNNING  # updated from PENDING
    # Zero does not wait at all: the wire reads a zero timeout as "no limit", so it is
    # answered by a read, not a wait that nothing here would ever end.
    async with asyncio.timeout(BOUND):
        assert await handle.wait(timeout=0) is False
    assert waits == [0.2]
    await handle.cancel()
    assert await handle.wait(timeout=0) is True


async def test_cancelling_an_attached_wait_cancels_a_cancel_mode_run(
    server: InProcessServer, client: AsyncClient
) -> None:
    handle = await client.create_run("t1", on_disconnect=DisconnectMode.CANCEL)
    waiting = asyncio.ensure_future(handle.wait(attach=True))
    await until(lambda: server.manager.waiters.waiter_count == 1, "the wait is registered")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The server sees the client go away and cancels the run.
    await until(lambda: server.manager.waiters.waiter_count == 0, "the server saw it")
    await server.manager.wait_detach_cancels()
    run = await handle.refresh()
    assert run.status is RunStatus.INTERRUPTED
    assert run.cancel_action is CancelAction.INTERRUPT
    assert run.cancel_reason is not None
    assert "disconnected" in run.cancel_reason


async def test_cancelling_an_attached_wait_leaves_a_continue_mode_run(
    server: InProcessServer, client: AsyncClient
) -> None:
    handle = await client.create_run("t1", on_disconnect=DisconnectMode.CONTINUE)
    waiting = asyncio.ensure_future(handle.wait(attach=True))
    await until(lambda: server.manager.waiters.waiter_count == 1, "the wait is registered")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await until(lambda: server.manager.waiters.waiter_count == 0, "the server saw it")
    await server.manager.wait_detach_cancels()
    assert (await handle.refresh()).status is RunStatus.PENDING


async def test_sync_handle_wait_in_a_thread(server: InProcessServer, client: AsyncClient) -> None:
    handle = await client.create_run("t1")

    def wait_blocking(timeout: float) -> tuple[bool, RunStatus]:
        with Client(server.address) as sync:
            sync_handle = sync.get_run(handle.run_id)
            done = sync_handle.wait(timeout=timeout)
            return done, sync_handle.run.status

    assert await asyncio.to_thread(wait_blocking, 0.1) == (False, RunStatus.PENDING)
    assert await asyncio.to_thread(wait_blocking, 0) == (False, RunStatus.PENDING)
    blocked = asyncio.ensure_future(asyncio.to_thread(wait_blocking, 10))
    await until(lambda: server.manager.waiters.waiter_count == 1, "the wait is registered")
    await handle.cancel(reason="done here")
    async with asyncio.timeout(10):
        assert await blocked == (True, RunStatus.INTERRUPTED)
