"""runcontrol.compat.deerflow: the original in-process RunManager's tests, embedded and
remote, plus cancels that cross from one compat manager to another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest

from runcontrol.compat.deerflow import (
    ConflictError,
    DisconnectMode,
    RunManager,
    RunRecord,
    RunStatus,
    UnsupportedStrategyError,
)
from runcontrol.testing import serve_in_process
from runcontrol_server.domain import RunManager as DomainManager
from runcontrol_server.stores import InMemoryRunStore

Factory = Callable[[], RunManager]


@pytest.fixture(params=["embedded", "remote"])
async def new_manager(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Makes compat managers that share one registry: embedded, one domain manager
    (`RunManager(domain_manager=...)`); remote, one in-process server."""
    made: list[RunManager] = []
    if request.param == "embedded":
        domain = DomainManager(InMemoryRunStore())

        def embedded() -> RunManager:
            manager = RunManager(domain_manager=domain)
            made.append(manager)
            return manager

        try:
            yield embedded
        finally:
            for manager in made:
                await manager.aclose()
            await domain.close()
    else:
        async with serve_in_process() as server:

            def remote() -> RunManager:
                manager = RunManager(address=server.address)
                made.append(manager)
                return manager

            try:
                yield remote
            finally:
                for manager in made:
                    await manager.aclose()


@pytest.fixture(params=["embedded", "remote"])
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[RunManager]:
    """One compat manager: `RunManager()` itself, or `RunManager(address=...)`."""
    if request.param == "embedded":
        async with RunManager() as embedded:
            yield embedded
    else:
        async with serve_in_process() as server, RunManager(address=server.address) as remote:
            yield remote


async def test_constructor_needs_no_loop_and_starts_nothing() -> None:
    def build() -> RunManager:
        return RunManager()

    manager = await asyncio.to_thread(build)  # no running loop in that thread
    assert manager.get("nope") is None
    await manager.aclose()


def test_env_selects_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCONTROL_ADDR", "127.0.0.1:1")
    assert RunManager().remote
    monkeypatch.delenv("RUNCONTROL_ADDR")
    assert not RunManager().remote


def test_enum_members_match_the_original() -> None:
    assert [s.value for s in RunStatus] == [
        "pending",
        "running",
        "success",
        "error",
        "timeout",
        "interrupted",
    ]
    assert RunStatus.pending == "pending"
    assert DisconnectMode("continue") is DisconnectMode.continue_
    assert DisconnectMode.cancel.value == "cancel"


async def test_create_and_get(manager: RunManager) -> None:
    record = await manager.create("thread-1", "assistant-1", metadata={"k": "v"})
    assert isinstance(record, RunRecord)
    assert record.status is RunStatus.pending
    assert record.thread_id == "thread-1"
    assert record.assistant_id == "assistant-1"
    assert record.on_disconnect is DisconnectMode.cancel
    assert record.metadata == {"k": "v"}
    assert record.kwargs == {}
    assert datetime.fromisoformat(record.created_at).tzinfo is not None
    assert record.created_at == record.updated_at
    assert manager.get(record.run_id) is record
    assert manager.get("nonexistent") is None


async def test_status_transitions_update_the_same_record(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    assert (record.status, record.worker_id) == (RunStatus.running, manager.worker_id)
    await manager.set_status(record.run_id, RunStatus.success)
    assert manager.get(record.run_id) is record
    assert record.status is RunStatus.success
    assert record.updated_at >= record.created_at


async def test_set_status_with_error(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    await manager.set_status(record.run_id, RunStatus.error, error="boom")
    assert record.status is RunStatus.error
    assert record.error == "boom"


async def test_success_on_a_pending_run_claims_it_first(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.success)
    assert record.status is RunStatus.success
    assert record.worker_id == manager.worker_id


async def test_set_status_unknown_run_is_a_no_op(manager: RunManager) -> None:
    await manager.set_status("nonexistent", RunStatus.running)
    assert manager.get("nonexistent") is None


async def test_late_write_after_cancel_keeps_the_cancel(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    assert await manager.cancel(record.run_id)
    await manager.set_status(record.run_id, RunStatus.success)  # does not raise
    assert record.status is RunStatus.interrupted
    await manager.set_status(record.run_id, RunStatus.error, error="stopped")
    assert record.status is RunStatus.interrupted


async def test_list_by_thread_newest_first(manager: RunManager) -> None:
    first = await manager.create("thread-1")
    second = await manager.create("thread-1")  # create never rejects
    await manager.create("thread-2")
    runs = await manager.list_by_thread("thread-1")
    assert runs == [second, first]
    assert runs[0] is second and runs[1] is first
    assert await manager.list_by_thread("thread-none") == []


async def test_list_by_thread_is_stable_when_timestamps_tie(
    manager: RunManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the original: with equal created_at, creation order (a stable sort)."""
    monkeypatch.setattr("runcontrol.compat.deerflow._now_iso", lambda: "2026-01-01T00:00:00+00:00")
    first = await manager.create("thread-1")
    second = await manager.create("thread-1")
    runs = await manager.list_by_thread("thread-1")
    assert [run.run_id for run in runs] == [first.run_id, second.run_id]
    assert first.created_at == second.created_at == "2026-01-01T00:00:00+00:00"


async def test_cancel(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    assert await manager.cancel(record.run_id) is True
    assert record.status is RunStatus.interrupted
    assert record.abort_event.is_set()
    assert record.abort_action == "interrupt"


async def test_cancel_rollback(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    assert await manager.cancel(record.run_id, action="rollback") is True
    assert record.abort_action == "rollback"
    assert record.abort_event.is_set()


async def test_cancel_not_inflight_or_unknown(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    await manager.set_status(record.run_id, RunStatus.success)
    assert await manager.cancel(record.run_id) is False
    assert not record.abort_event.is_set()
    assert await manager.cancel("nonexistent") is False


async def test_cancel_cancels_the_attached_task(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    record.task = asyncio.create_task(asyncio.Event().wait())
    assert await manager.cancel(record.run_id)
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await record.task


async def test_worker_reporting_interrupted_is_not_aborted(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    await manager.set_status(record.run_id, RunStatus.interrupted)
    assert record.status is RunStatus.interrupted
    assert not record.abort_event.is_set()


async def test_create_or_reject_rejects_a_busy_thread(manager: RunManager) -> None:
    record = await manager.create_or_reject("thread-1")
    with pytest.raises(ConflictError, match="already has an active run"):
        await manager.create_or_reject("thread-1")
    await manager.set_status(record.run_id, RunStatus.running)
    await manager.set_status(record.run_id, RunStatus.success)
    again = await manager.create_or_reject("thread-1")
    assert again.status is RunStatus.pending


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_create_or_reject_interrupts_inflight(manager: RunManager, strategy: str) -> None:
    old = await manager.create_or_reject("thread-1")
    await manager.set_status(old.run_id, RunStatus.running)
    old.task = asyncio.create_task(asyncio.Event().wait())
    new = await manager.create_or_reject("thread-1", multitask_strategy=strategy)
    assert new.status is RunStatus.pending
    assert new.multitask_strategy == strategy
    assert old.status is RunStatus.interrupted
    assert old.abort_event.is_set()
    assert old.abort_action == strategy
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await old.task


async def test_create_or_reject_unsupported_strategy(manager: RunManager) -> None:
    with pytest.raises(UnsupportedStrategyError, match="enqueue"):
        await manager.create_or_reject("thread-1", multitask_strategy="enqueue")


async def test_has_inflight(manager: RunManager) -> None:
    assert await manager.has_inflight("thread-1") is False
    record = await manager.create("thread-1")
    assert await manager.has_inflight("thread-1") is True
    await manager.set_status(record.run_id, RunStatus.running)
    assert await manager.has_inflight("thread-1") is True
    await manager.set_status(record.run_id, RunStatus.success)
    assert await manager.has_inflight("thread-1") is False


async def test_cleanup(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    await manager.set_status(record.run_id, RunStatus.success)
    await manager.cleanup(record.run_id, delay=0)
    assert manager.get(record.run_id) is None
    assert await manager.list_by_thread("thread-1") == []
    await manager.cleanup(record.run_id, delay=0)  # unknown: no error


async def test_cleanup_of_an_active_run_cancels_it(manager: RunManager) -> None:
    record = await manager.create("thread-1")
    record.task = asyncio.create_task(asyncio.Event().wait())
    await manager.cleanup(record.run_id, delay=0)
    assert manager.get(record.run_id) is None
    assert record.abort_event.is_set()
    assert await manager.has_inflight("thread-1") is False
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await record.task


async def test_cancel_by_another_manager_reaches_the_holder(new_manager: Factory) -> None:
    holder = new_manager()
    record = await holder.create_or_reject("thread-1")
    await holder.set_status(record.run_id, RunStatus.running)
    record.task = asyncio.create_task(asyncio.Event().wait())
    other = new_manager()
    assert await other.cancel(record.run_id, action="rollback") is True
    async with asyncio.timeout(5):
        await record.abort_event.wait()
    assert record.abort_action == "rollback"
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await record.task
    assert record.status is RunStatus.interrupted


async def test_interrupt_by_another_manager_reaches_the_holder(new_manager: Factory) -> None:
    holder = new_manager()
    record = await holder.create_or_reject("thread-1")
    record.task = asyncio.create_task(asyncio.Event().wait())
    other = new_manager()
    await other.create_or_reject("thread-1", multitask_strategy="interrupt")
    async with asyncio.timeout(5):
        await record.abort_event.wait()
    assert record.abort_action == "interrupt"
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await record.task
