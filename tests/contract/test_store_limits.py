"""The store limits (`StoreLimits`) on every store: refused past the edge, nothing
changed by a refusal, room again once runs finish or go.

`max_active_runs_per_thread` is checked inside each store's atomic create (under the
thread row lock on PostgreSQL), so concurrent creates never pass it. `max_stored_runs`
is exact for one caller at a time; on PostgreSQL creates committing at the same moment
may pass it by the number in flight (see `stores.postgres.stored_runs`).
"""

from __future__ import annotations

import asyncio

import pytest

from runcontrol_server.domain import (
    LimitExceeded,
    MultitaskStrategy,
    RunManager,
    RunStatus,
    RunStore,
    ThreadBusy,
)
from runcontrol_server.domain.limits import StoreLimits
from runcontrol_server.stores import InMemoryRunStore

ACTIVE = 3
STORED = 12  # above the concurrency test's rounds times ACTIVE
ENQUEUE = MultitaskStrategy.ENQUEUE
POSTGRES_POOL_SIZE = 8  # conftest's


@pytest.fixture
def store_limits() -> StoreLimits:
    # Overrides conftest's: every store of this module is built with these.
    return StoreLimits(max_active_runs_per_thread=ACTIVE, max_stored_runs=STORED)


async def _state(manager: RunManager, store: RunStore) -> tuple[object, ...]:
    """What a refused create must leave as it was."""
    page = await store.snapshot(None, frozenset())
    return page, await manager.revision()


async def _fill_thread(manager: RunManager, thread_id: str) -> list[str]:
    ids = [(await manager.create_run(thread_id)).run.run_id]
    for _ in range(ACTIVE - 1):
        ids.append((await manager.create_run(thread_id, multitask_strategy=ENQUEUE)).run.run_id)
    return ids


async def test_enqueue_past_the_active_runs_of_a_thread_is_refused(
    manager: RunManager, store: RunStore
) -> None:
    ids = await _fill_thread(manager, "t")
    before = await _state(manager, store)
    with pytest.raises(LimitExceeded) as raised:
        await manager.create_run("t", multitask_strategy=ENQUEUE)
    assert raised.value.limit == "max_active_runs_per_thread"
    assert await _state(manager, store) == before
    assert (await manager.has_inflight("t")).run_ids == tuple(ids)
    # The other strategies never grow a thread past one active run.
    with pytest.raises(ThreadBusy):
        await manager.create_run("t")
    # Other threads are not affected.
    await manager.create_run("u", multitask_strategy=ENQUEUE)


async def test_a_finished_run_makes_room_in_its_thread(manager: RunManager) -> None:
    first, *_ = await _fill_thread(manager, "t")
    await manager.set_status(first, RunStatus.RUNNING, worker_id="w")
    await manager.set_status(first, RunStatus.SUCCESS, worker_id="w")
    queued = await manager.create_run("t", multitask_strategy=ENQUEUE)
    assert len(queued.queued_behind) == ACTIVE - 1


async def test_interrupt_on_a_full_thread_is_not_refused(manager: RunManager) -> None:
    ids = await _fill_thread(manager, "t")
    outcome = await manager.create_run("t", multitask_strategy=MultitaskStrategy.INTERRUPT)
    assert sorted(r.run_id for r in outcome.interrupted) == sorted(ids)
    assert (await manager.has_inflight("t")).run_ids == (outcome.run.run_id,)


async def test_a_replay_is_answered_on_a_full_thread(manager: RunManager) -> None:
    first = await manager.create_run("t", request_id="req-1")
    for _ in range(ACTIVE - 1):
        await manager.create_run("t", multitask_strategy=ENQUEUE)
    replay = await manager.create_run("t", request_id="req-1")
    assert replay.replayed and replay.run.run_id == first.run.run_id


async def test_concurrent_enqueues_never_pass_the_limit(manager: RunManager) -> None:
    for round_ in range(3):
        thread_id = f"race-{round_}"
        results = await asyncio.gather(
            *(manager.create_run(thread_id, multitask_strategy=ENQUEUE) for _ in range(16)),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == ACTIVE
        assert all(isinstance(e, LimitExceeded) for e in refused), refused
        assert len((await manager.has_inflight(thread_id)).run_ids) == ACTIVE


async def test_creates_past_the_stored_runs_are_refused(
    manager: RunManager, store: RunStore
) -> None:
    runs = [(await manager.create_run(f"t{i}", request_id=f"r{i}")).run for i in range(STORED)]
    before = await _state(manager, store)
    for thread_id in ("t0", "new"):  # a busy thread and a new one alike
        with pytest.raises(LimitExceeded) as raised:
            await manager.create_run(thread_id, multitask_strategy=MultitaskStrategy.INTERRUPT)
        assert raised.value.limit == "max_stored_runs"
    assert await _state(manager, store) == before
    # A replay creates nothing, so it is answered.
    assert (await manager.create_run("t0", request_id="r0")).replayed
    # Deleting a finished run makes room for one.
    await manager.cancel_run(runs[0].run_id)
    await manager.delete_run(runs[0].run_id)
    await manager.create_run("new")
    with pytest.raises(LimitExceeded):
        await manager.create_run("newer")


async def test_status_changes_between_creates_do_not_hide_room(manager: RunManager) -> None:
    # Revisions that add no run (claims, finishes) must not make a store refuse early.
    for i in range(STORED):
        run = (await manager.create_run(f"t{i}")).run
        await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
        await manager.set_status(run.run_id, RunStatus.SUCCESS, worker_id="w")
    with pytest.raises(LimitExceeded):
        await manager.create_run("one-too-many")


async def test_concurrent_creates_at_the_stored_runs_edge(
    manager: RunManager, store: RunStore
) -> None:
    for i in range(STORED - 2):
        await manager.create_run(f"t{i}")
    results = await asyncio.gather(
        *(manager.create_run(f"race-{i}") for i in range(16)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, LimitExceeded) for e in refused), refused
    stored = len((await store.snapshot(None, frozenset()))[0])
    # Exact in memory (one event-loop step); on PostgreSQL a create counts without a
    # lock, so those in flight together (at most the pool's connections) may all fit.
    in_flight = 1 if isinstance(store, InMemoryRunStore) else POSTGRES_POOL_SIZE
    assert STORED <= stored <= STORED - 1 + in_flight
