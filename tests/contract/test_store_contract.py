"""The store contract: what every `RunStore` must do, driven through the manager."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from runcontrol_server.domain import (
    AlreadyClaimed,
    CancelAction,
    ChangeKind,
    DisconnectMode,
    InvalidTransition,
    ListQuery,
    MultitaskStrategy,
    RequestIdReused,
    RevisionCompacted,
    RevisionMismatch,
    RunActive,
    RunManager,
    RunNotFound,
    RunStatus,
    RunStore,
    ThreadBusy,
)

from .conftest import HISTORY


async def test_create_then_get_returns_the_same_record(manager: RunManager) -> None:
    created = await manager.create_run(
        "t1", assistant_id="a", metadata={"k": [1, {"x": None}]}, kwargs={"n": 1.5}
    )
    run = created.run
    assert await manager.get_run(run.run_id) == run
    assert run.status is RunStatus.PENDING
    assert run.on_disconnect is DisconnectMode.CANCEL
    assert run.multitask_strategy is MultitaskStrategy.REJECT
    assert run.cancel_action is CancelAction.INTERRUPT
    assert run.metadata == {"k": [1, {"x": None}]}
    assert run.kwargs == {"n": 1.5}
    assert run.create_revision == run.mod_revision == await manager.revision()
    assert run.deadline is None


async def test_timeout_sets_the_deadline(manager: RunManager) -> None:
    run = (await manager.create_run("t1", run_timeout=timedelta(seconds=90))).run
    assert run.deadline == run.created_at + timedelta(seconds=90)


async def test_unknown_run(manager: RunManager) -> None:
    for call in (
        manager.get_run("nope"),
        manager.set_status("nope", RunStatus.RUNNING),
        manager.cancel_run("nope"),
        manager.delete_run("nope"),
    ):
        with pytest.raises(RunNotFound):
            await call


async def test_every_change_takes_the_next_revision(manager: RunManager) -> None:
    assert await manager.revision() == 0
    a = (await manager.create_run("t1")).run
    assert a.create_revision == 1
    claimed = (await manager.set_status(a.run_id, RunStatus.RUNNING, worker_id="w")).run
    assert claimed.mod_revision == 2
    again = await manager.set_status(a.run_id, RunStatus.RUNNING, worker_id="w")
    assert (again.changed, again.run, await manager.revision()) == (False, claimed, 2)
    done = (await manager.set_status(a.run_id, RunStatus.SUCCESS)).run
    assert (done.mod_revision, done.create_revision, done.worker_id) == (3, 1, "w")
    deleted = await manager.delete_run(a.run_id)
    assert deleted.revision == 4 == await manager.revision()


async def test_reject_on_busy_thread(manager: RunManager) -> None:
    first = (await manager.create_run("t1")).run
    with pytest.raises(ThreadBusy) as info:
        await manager.create_run("t1")
    assert info.value.inflight_run_ids == (first.run_id,)
    assert (await manager.create_run("t2")).run.thread_id == "t2"  # other threads unaffected


@pytest.mark.parametrize(
    ("strategy", "action"),
    [
        (MultitaskStrategy.INTERRUPT, CancelAction.INTERRUPT),
        (MultitaskStrategy.ROLLBACK, CancelAction.ROLLBACK),
    ],
)
async def test_interrupt_and_rollback(
    manager: RunManager, store: RunStore, strategy: MultitaskStrategy, action: CancelAction
) -> None:
    a = (await manager.create_run("t1")).run
    await manager.set_status(a.run_id, RunStatus.RUNNING, worker_id="w")
    b = (await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)).run
    outcome = await manager.create_run("t1", multitask_strategy=strategy)
    new = outcome.run
    assert [r.run_id for r in outcome.interrupted] == [a.run_id, b.run_id]
    for run in outcome.interrupted:
        assert run.status is RunStatus.INTERRUPTED
        assert run.cancel_action is action
        assert run.cancel_reason is not None and new.run_id in run.cancel_reason
        assert run.mod_revision == new.create_revision
        assert await manager.get_run(run.run_id) == run
    assert (await manager.has_inflight("t1")).run_ids == (new.run_id,)
    # One revision, one change set: the two interrupts and the create.
    (change_set,) = await store.read_changes(new.create_revision - 1, 10)
    assert [c.kind for c in change_set.changes] == [
        ChangeKind.UPDATED,
        ChangeKind.UPDATED,
        ChangeKind.CREATED,
    ]
    assert change_set.changes[0].prev_status is RunStatus.RUNNING


async def test_enqueue_is_fifo_per_thread(manager: RunManager) -> None:
    first = (await manager.create_run("t1")).run
    queued = await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)
    assert queued.queued_behind == (first.run_id,)
    third = await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)
    assert third.queued_behind == (first.run_id, queued.run.run_id)
    # Neither queued run may start while runs ahead of it are active.
    for run_id in (queued.run.run_id, third.run.run_id):
        with pytest.raises(InvalidTransition) as info:
            await manager.set_status(run_id, RunStatus.RUNNING, worker_id="w2")
        assert first.run_id in info.value.queued_behind
    await manager.set_status(first.run_id, RunStatus.RUNNING, worker_id="w1")
    await manager.set_status(first.run_id, RunStatus.SUCCESS, worker_id="w1")
    with pytest.raises(InvalidTransition) as info:
        await manager.set_status(third.run.run_id, RunStatus.RUNNING)
    assert info.value.queued_behind == (queued.run.run_id,)
    assert (await manager.set_status(queued.run.run_id, RunStatus.RUNNING, worker_id="w2")).changed
    await manager.cancel_run(queued.run.run_id)
    assert (await manager.set_status(third.run.run_id, RunStatus.RUNNING)).changed


async def test_exactly_one_concurrent_claim(manager: RunManager) -> None:
    run = (await manager.create_run("t1")).run

    async def claim(worker: str) -> str:
        try:
            await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id=worker)
        except AlreadyClaimed:
            return "lost"
        return worker

    results = await asyncio.gather(*(claim(f"w{i}") for i in range(16)))
    winners = [r for r in results if r != "lost"]
    assert len(winners) == 1
    assert (await manager.get_run(run.run_id)).worker_id == winners[0]


async def test_exactly_one_concurrent_reject_create(manager: RunManager) -> None:
    async def create() -> str | None:
        try:
            return (await manager.create_run("busy")).run.run_id
        except ThreadBusy:
            return None

    results = await asyncio.gather(*(create() for _ in range(64)))
    assert sum(r is not None for r in results) == 1


async def test_expected_mod_revision(manager: RunManager) -> None:
    run = (await manager.create_run("t1")).run
    with pytest.raises(RevisionMismatch):
        await manager.set_status(
            run.run_id, RunStatus.RUNNING, expected_mod_revision=run.mod_revision + 1
        )
    moved = await manager.set_status(
        run.run_id, RunStatus.RUNNING, expected_mod_revision=run.mod_revision
    )
    assert moved.changed
    done = await manager.set_status(run.run_id, RunStatus.SUCCESS)
    with pytest.raises(RevisionMismatch):
        await manager.delete_run(run.run_id, expected_mod_revision=moved.run.mod_revision)
    await manager.delete_run(run.run_id, expected_mod_revision=done.run.mod_revision)


async def test_cancel_is_idempotent(manager: RunManager) -> None:
    run = (await manager.create_run("t1")).run
    first = await manager.cancel_run(run.run_id, action=CancelAction.ROLLBACK, reason="user")
    assert first.cancelled
    assert (first.run.status, first.run.cancel_action, first.run.cancel_reason) == (
        RunStatus.INTERRUPTED,
        CancelAction.ROLLBACK,
        "user",
    )
    revision = await manager.revision()
    second = await manager.cancel_run(run.run_id)
    assert (second.cancelled, second.run, await manager.revision()) == (False, first.run, revision)
    # A worker that starts late cannot flip a cancelled run back to RUNNING.
    with pytest.raises(InvalidTransition):
        await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="late")


async def test_default_cancel_reason(manager: RunManager) -> None:
    run = (await manager.create_run("t1")).run
    cancelled = (await manager.cancel_run(run.run_id)).run
    assert (cancelled.cancel_action, cancelled.cancel_reason) == (
        CancelAction.INTERRUPT,
        "cancelled by client",
    )


async def test_request_id_retry_and_reuse(manager: RunManager) -> None:
    first = await manager.create_run("t1", request_id="req-1", metadata={"a": 1})
    again = await manager.create_run("t1", request_id="req-1", metadata={"a": 1})
    assert again.replayed and not first.replayed
    assert (again.run, again.interrupted) == (first.run, first.interrupted)
    assert (await manager.list_runs(ListQuery(thread_id="t1"))).runs == (first.run,)
    with pytest.raises(RequestIdReused) as info:
        await manager.create_run("t1", request_id="req-1", metadata={"a": 2})
    assert info.value.run_id == first.run.run_id
    # The key lives as long as its run: once the run is deleted it may be used again.
    await manager.cancel_run(first.run.run_id)
    await manager.delete_run(first.run.run_id)
    reborn = await manager.create_run("t1", request_id="req-1", metadata={"a": 2})
    assert not reborn.replayed and reborn.run.run_id != first.run.run_id


async def test_concurrent_request_id_retries_create_one_run(manager: RunManager) -> None:
    outcomes = await asyncio.gather(
        *(manager.create_run("t9", request_id="same") for _ in range(32))
    )
    assert len({o.run.run_id for o in outcomes}) == 1
    assert sum(not o.replayed for o in outcomes) == 1


async def test_delete(manager: RunManager, store: RunStore) -> None:
    run = (await manager.create_run("t1")).run
    with pytest.raises(RunActive) as info:
        await manager.delete_run(run.run_id)
    assert info.value.status is RunStatus.PENDING
    await manager.set_status(run.run_id, RunStatus.ERROR, error="boom")
    deleted = await manager.delete_run(run.run_id)
    assert deleted.run.status is RunStatus.ERROR
    with pytest.raises(RunNotFound):
        await manager.get_run(run.run_id)
    assert (await manager.list_runs(ListQuery(thread_id="t1"))).runs == ()
    (change_set,) = await store.read_changes(deleted.revision - 1, 10)
    assert change_set.changes[0].kind is ChangeKind.DELETED


async def test_has_inflight(manager: RunManager) -> None:
    assert (await manager.has_inflight("t1")).run_ids == ()
    a = (await manager.create_run("t1")).run
    b = (await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)).run
    inflight = await manager.has_inflight("t1")
    assert inflight.run_ids == (a.run_id, b.run_id)
    assert inflight.revision == await manager.revision()
    await manager.cancel_run(a.run_id)
    await manager.cancel_run(b.run_id)
    assert (await manager.has_inflight("t1")).run_ids == ()


async def test_list_order_filters_and_pages(manager: RunManager) -> None:
    ids = []
    for i in range(7):
        run = (await manager.create_run(f"t{i % 2}")).run
        await manager.set_status(run.run_id, RunStatus.ERROR if i % 3 else RunStatus.INTERRUPTED)
        ids.append(run.run_id)
    everything = await manager.list_runs(ListQuery(limit=100))
    assert [r.run_id for r in everything.runs] == ids[::-1]
    assert everything.next_cursor is None
    assert everything.revision == await manager.revision()
    t0 = await manager.list_runs(ListQuery(thread_id="t0", limit=100))
    assert [r.run_id for r in t0.runs] == ids[::2][::-1]
    errors = await manager.list_runs(ListQuery(statuses=frozenset({RunStatus.ERROR}), limit=100))
    assert [r.run_id for r in errors.runs] == [ids[i] for i in (5, 4, 2, 1)]
    seen: list[str] = []
    query = ListQuery(limit=3)
    while True:
        page = await manager.list_runs(query)
        seen += [r.run_id for r in page.runs]
        if page.next_cursor is None:
            break
        query = ListQuery(limit=3, after=page.next_cursor)
    assert seen == ids[::-1]
    exact = await manager.list_runs(ListQuery(limit=7))
    assert exact.next_cursor is None  # no empty trailing page


async def test_change_feed_reads_in_bounded_batches_and_compacts(
    manager: RunManager, store: RunStore
) -> None:
    for i in range(HISTORY + 6):  # more than the contract stores keep
        await manager.create_run(f"t{i}")
    head = await manager.revision()
    kept = await store.read_changes(head - 6, 1000)
    assert [c.revision for c in kept] == list(range(head - 5, head + 1))
    assert [c.revision for c in await store.read_changes(head - 6, 2)] == [head - 5, head - 4]
    assert await store.read_changes(head, 1000) == []
    await store.compact_changes()
    bounds = await store.feed_bounds()
    assert bounds.head_revision == head
    assert 1 <= bounds.compact_revision <= head - HISTORY
    with pytest.raises(RevisionCompacted) as info:
        await store.read_changes(0, 1000)
    assert info.value.compact_revision == bounds.compact_revision
    oldest = bounds.compact_revision + 1
    assert (await store.read_changes(oldest - 1, 1))[0].revision == oldest


async def test_wait_for_changes_wakes_on_a_commit(manager: RunManager, store: RunStore) -> None:
    head = await manager.revision()
    # No wait: the bounds as they are.
    assert (await store.wait_for_changes(head, 0)).head_revision == head
    waiting = asyncio.ensure_future(store.wait_for_changes(head, 30))
    await asyncio.sleep(0)
    assert not waiting.done()
    await manager.create_run("t1")
    assert (await waiting).head_revision == head + 1
    # Already beyond: answered at once.
    assert (await store.wait_for_changes(head, 30)).head_revision == head + 1


async def test_the_claimer_may_note_why_a_cancelled_run_stopped(manager: RunManager) -> None:
    run = (await manager.create_run("t1")).run
    await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
    rolled = (await manager.cancel_run(run.run_id, action=CancelAction.ROLLBACK)).run
    # The claiming worker records what it did; the run stays INTERRUPTED (rolled back).
    noted = await manager.set_status(
        run.run_id, RunStatus.ERROR, error="Rolled back by user", worker_id="w"
    )
    assert noted.changed and noted.run.mod_revision == rolled.mod_revision + 1
    assert noted.run.status is RunStatus.INTERRUPTED
    assert noted.run.cancel_action is CancelAction.ROLLBACK
    assert noted.run.error == "Rolled back by user"
    assert await manager.get_run(run.run_id) == noted.run
    # The same note again is a repeat; anyone else, or any other move, is refused.
    again = await manager.set_status(
        run.run_id, RunStatus.ERROR, error="Rolled back by user", worker_id="w"
    )
    assert not again.changed
    with pytest.raises(InvalidTransition):
        await manager.set_status(run.run_id, RunStatus.SUCCESS, worker_id="w")
    for worker_id in ("other", None):  # only the claimer may note, and only with ERROR
        with pytest.raises(InvalidTransition):
            await manager.set_status(run.run_id, RunStatus.ERROR, error="x", worker_id=worker_id)


async def test_a_noted_run_is_still_forgotten_by_retention(
    manager: RunManager, store: RunStore
) -> None:
    run = (await manager.create_run("t1")).run
    await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
    await manager.cancel_run(run.run_id)
    noted = await manager.set_status(run.run_id, RunStatus.ERROR, error="stopped", worker_id="w")
    # Retention counts from the last update (the note), on the store's clock.
    assert await store.oldest_finished_at() == noted.run.updated_at
    (purged,) = await store.purge_finished(await store.now(), 10)
    assert purged == noted.run
    with pytest.raises(RunNotFound):
        await manager.get_run(run.run_id)
