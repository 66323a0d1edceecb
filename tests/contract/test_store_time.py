"""The store contract for time: deadlines, retention and snapshots.

Times are passed in explicitly (`expire_due(now)`, `purge_finished(before)`), so
these tests never sleep and hold for every store whatever its clock.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from runcontrol_server.domain import (
    ChangeKind,
    ListQuery,
    RunManager,
    RunNotFound,
    RunStatus,
    RunStore,
)

US = timedelta(microseconds=1)


async def test_expire_due_times_out_only_active_runs_past_their_deadline(
    manager: RunManager, store: RunStore
) -> None:
    due = (await manager.create_run("t1", run_timeout=timedelta(seconds=10))).run
    claimed = (await manager.create_run("t2", run_timeout=timedelta(seconds=10))).run
    await manager.set_status(claimed.run_id, RunStatus.RUNNING, worker_id="w")
    later = (await manager.create_run("t3", run_timeout=timedelta(seconds=60))).run
    finished = (await manager.create_run("t4", run_timeout=timedelta(seconds=10))).run
    await manager.set_status(finished.run_id, RunStatus.ERROR, error="boom")
    endless = (await manager.create_run("t5")).run
    assert due.deadline is not None and later.deadline is not None

    assert await store.expire_due(due.deadline - US, 100) == []
    before = await store.revision()
    expired = await store.expire_due(due.deadline + timedelta(seconds=1), 100)

    assert {run.run_id for run in expired} == {due.run_id, claimed.run_id}
    assert all(run.status is RunStatus.TIMEOUT for run in expired)
    # Each expiry is its own revision, in order, and the store's head moved with them.
    assert [run.mod_revision for run in expired] == [before + 1, before + 2]
    assert await store.revision() == before + 2
    by_id = {run.run_id: run for run in expired}
    assert by_id[claimed.run_id].worker_id == "w"
    assert by_id[due.run_id].error is not None  # says why it ended
    for run in expired:
        assert await manager.get_run(run.run_id) == run
    # The others are untouched.
    assert (await manager.get_run(later.run_id)) == later
    assert (await manager.get_run(endless.run_id)).status is RunStatus.PENDING
    assert (await manager.get_run(finished.run_id)).status is RunStatus.ERROR
    # Expired runs left their thread's active set.
    assert (await manager.has_inflight("t1")).run_ids == ()


async def test_expire_due_publishes_a_timeout_event_with_the_previous_status(
    manager: RunManager, store: RunStore
) -> None:
    pending = (await manager.create_run("t1", run_timeout=timedelta(seconds=1))).run
    running = (await manager.create_run("t2", run_timeout=timedelta(seconds=1))).run
    await manager.set_status(running.run_id, RunStatus.RUNNING)
    before = await store.revision()
    assert pending.deadline is not None
    expired = await store.expire_due(pending.deadline + timedelta(seconds=5), 100)

    change_sets = await store.read_changes(before, 1000)
    assert [cs.revision for cs in change_sets] == [before + 1, before + 2]
    changes = [change for cs in change_sets for change in cs.changes]
    assert [(c.kind, c.run, c.prev_status) for c in changes] == [
        (ChangeKind.UPDATED, expired[0], RunStatus.PENDING),
        (ChangeKind.UPDATED, expired[1], RunStatus.RUNNING),
    ]


async def test_expire_due_respects_its_limit(manager: RunManager, store: RunStore) -> None:
    runs = [
        (await manager.create_run(f"t{i}", run_timeout=timedelta(seconds=1))).run for i in range(5)
    ]
    now = (await store.now()) + timedelta(seconds=10)
    first = await store.expire_due(now, 2)
    rest = await store.expire_due(now, 100)
    assert (len(first), len(rest)) == (2, 3)
    assert {r.run_id for r in first + rest} == {r.run_id for r in runs}
    assert await store.expire_due(now, 100) == []


async def test_next_deadline_is_the_earliest_active_deadline(
    manager: RunManager, store: RunStore
) -> None:
    assert await store.next_deadline() is None
    late = (await manager.create_run("t1", run_timeout=timedelta(seconds=30))).run
    early = (await manager.create_run("t2", run_timeout=timedelta(seconds=5))).run
    await manager.create_run("t3")
    assert await store.next_deadline() == early.deadline
    # A run that finishes no longer has a deadline that matters.
    await manager.cancel_run(early.run_id)
    assert await store.next_deadline() == late.deadline
    assert late.deadline is not None
    await store.expire_due(late.deadline, 100)
    assert await store.next_deadline() is None


async def test_oldest_finished_at_follows_finish_order(
    manager: RunManager, store: RunStore
) -> None:
    assert await store.oldest_finished_at() is None
    a = (await manager.create_run("t1")).run
    b = (await manager.create_run("t2")).run
    await manager.create_run("t3")  # stays active
    assert await store.oldest_finished_at() is None
    # b finishes first, so it is the oldest finished run, whatever the creation order.
    b_done = (await manager.cancel_run(b.run_id)).run
    a_done = (await manager.set_status(a.run_id, RunStatus.ERROR)).run
    assert await store.oldest_finished_at() == b_done.updated_at
    await manager.delete_run(b.run_id)
    assert await store.oldest_finished_at() == a_done.updated_at
    await store.purge_finished(a_done.updated_at, 100)
    assert await store.oldest_finished_at() is None


async def test_purge_finished_deletes_only_runs_finished_before_the_cutoff(
    manager: RunManager, store: RunStore
) -> None:
    old = (await manager.create_run("t1", request_id="req-old")).run
    old_done = (await manager.set_status(old.run_id, RunStatus.ERROR)).run
    young = (await manager.create_run("t2", request_id="req-young")).run
    young_done = (await manager.cancel_run(young.run_id)).run
    active = (await manager.create_run("t3", request_id="req-active")).run
    assert young_done.updated_at > old_done.updated_at
    before = await store.revision()

    purged = await store.purge_finished(old_done.updated_at, 100)

    assert purged == [old_done]
    assert await store.revision() == before + 1
    (change_set,) = await store.read_changes(before, 1000)
    assert [(c.kind, c.run, c.prev_status) for c in change_set.changes] == [
        (ChangeKind.DELETED, old_done, RunStatus.ERROR)
    ]
    with pytest.raises(RunNotFound):
        await manager.get_run(old.run_id)
    # The thread index forgot it, and its request_id is free for a new run.
    assert (await manager.list_runs(ListQuery(thread_id="t1"))).runs == ()
    assert (await manager.has_inflight("t1")).run_ids == ()
    again = await manager.create_run("t1", request_id="req-old")
    assert not again.replayed and again.run.run_id != old.run_id
    # Younger finished runs and active runs stay, whatever the cutoff for the latter.
    assert await manager.get_run(young.run_id) == young_done
    assert await store.purge_finished((await store.now()) + timedelta(days=1), 100) == [young_done]
    assert await manager.get_run(active.run_id) == active
    replay = await manager.create_run("t3", request_id="req-active")
    assert replay.replayed and replay.run == active


async def test_purge_finished_respects_its_limit(manager: RunManager, store: RunStore) -> None:
    for i in range(5):
        run = (await manager.create_run(f"t{i}")).run
        await manager.cancel_run(run.run_id)
    cutoff = await store.now()
    before = await store.revision()
    first = await store.purge_finished(cutoff, 2)
    rest = await store.purge_finished(cutoff, 100)
    assert (len(first), len(rest)) == (2, 3)
    assert [r.create_revision for r in first + rest] == sorted(
        r.create_revision for r in first + rest
    )
    assert await store.revision() == before + 5
    assert (await manager.list_runs(ListQuery())).runs == ()


async def test_snapshot_is_oldest_first_at_one_revision(
    manager: RunManager, store: RunStore
) -> None:
    a1 = (await manager.create_run("ta")).run
    b1 = (await manager.create_run("tb")).run
    a1 = (await manager.cancel_run(a1.run_id)).run
    a2 = (await manager.create_run("ta")).run
    revision = await store.revision()

    assert await store.snapshot(None, frozenset()) == ((a1, b1, a2), revision)
    assert await store.snapshot("ta", frozenset()) == ((a1, a2), revision)
    assert await store.snapshot(None, frozenset({a2.run_id, b1.run_id, "gone"})) == (
        (b1, a2),
        revision,
    )
    # Both filters: the ids limited to the thread.
    assert await store.snapshot("tb", frozenset({a1.run_id, b1.run_id})) == ((b1,), revision)
    await manager.delete_run(a1.run_id)
    assert await store.snapshot("ta", frozenset()) == ((a2,), revision + 1)
