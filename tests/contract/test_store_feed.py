"""The store contract for the change feed and what follows it: watch, wait, the janitor.

Driven through the manager and the store protocol only, so it holds for every store in
STORE_FACTORIES, including one that does real I/O: every store call may yield to the
event loop, the feed cache may lag the store by one read, and the clock is the store's.
Nothing here measures wall time: behaviour is proven by what arrives (changes, batches,
wake-ups), every wait is bounded by `asyncio.timeout`, and the few short timeouts given
to the code under test only decide *which* answer comes, never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from _streams import until

from runcontrol_server.domain import (
    ChangeKind,
    ChangeSet,
    EventType,
    InvalidArgument,
    ListQuery,
    MultitaskStrategy,
    RevisionCompacted,
    Run,
    RunManager,
    RunNotFound,
    RunStatus,
    RunStore,
    WatchBatch,
    Watcher,
    WatchEvent,
    WatchFilter,
    classify,
)

from .conftest import HISTORY

# Generous bound on every wait for something that must happen (never an assertion on
# elapsed time: a wait that hits it fails the test with a TimeoutError).
BOUND = 20.0
# A timeout handed to the code under test when the answer must be "nothing happened".
TINY = 0.05
# Watchers report progress this often when idle, so a filtered watcher's cursor moves
# past revisions it does not deliver and `collect` can stop at a given revision.
PROGRESS = 0.05


@contextlib.asynccontextmanager
async def running(store: RunStore, **options: Any) -> AsyncIterator[RunManager]:
    """A started manager over `store` (feed cache and janitor), closed on every exit."""
    manager = RunManager(store, **options)
    try:
        await manager.start()
        yield manager
    finally:
        # Bounded: a close that hangs fails here, with its own traceback.
        async with asyncio.timeout(BOUND):
            await manager.close()


@pytest.fixture
async def started(store: RunStore) -> AsyncIterator[RunManager]:
    async with running(store) as manager:
        yield manager


async def watch_from(manager: RunManager, watch_filter: WatchFilter, revision: int) -> Watcher:
    """A watcher that starts at `revision` (waiting for the feed cache to get there)."""
    watcher = await manager.watch(watch_filter, progress_interval=PROGRESS)
    try:
        await manager.seek(watcher, revision)
    except BaseException:
        watcher.close()
        raise
    return watcher


async def next_batch(watcher: Watcher) -> WatchBatch:
    """The next batch with events (progress messages skipped), bounded."""
    async with asyncio.timeout(BOUND):
        while True:
            batch = await anext(watcher)
            if not batch.progress_only:
                return batch


async def collect(watcher: Watcher, through: int) -> list[WatchBatch]:
    """Every batch with events until the watcher has processed revision `through`."""
    batches: list[WatchBatch] = []
    async with asyncio.timeout(BOUND):
        while watcher.revision < through:
            batch = await anext(watcher)
            if not batch.progress_only:
                batches.append(batch)
    return batches


def expected_batches(
    change_sets: Sequence[ChangeSet], watch_filter: WatchFilter
) -> list[WatchBatch]:
    """What a watcher with `watch_filter` must deliver for the store's change sets."""
    batches = []
    for change_set in change_sets:
        events = tuple(
            event
            for index, change in enumerate(change_set.changes)
            if (event := classify(change, watch_filter, change_set.revision, index)) is not None
        )
        if events:
            batches.append(WatchBatch(change_set.revision, events))
    return batches


def shape(batches: Sequence[WatchBatch]) -> list[tuple[int, list[tuple[EventType, str, int]]]]:
    return [
        (b.revision, [(e.type, e.change.run.run_id, e.index) for e in b.events]) for b in batches
    ]


async def read_all(store: RunStore, after: int) -> list[ChangeSet]:
    return list(await store.read_changes(after, 10_000))


@dataclass
class Scenario:
    """A run of operations over two threads touching every kind of change."""

    before: int
    head: int
    a: Run  # t1: claimed, then interrupted by c, then deleted
    b: Run  # t1: enqueued behind a, interrupted by c
    c: Run  # t1: created with INTERRUPT, claimed, failed
    x: Run  # t2: claimed, succeeded, deleted
    d: Run  # t3: created with a request_id (then replayed)
    revisions: dict[str, int]  # step name -> its revision
    records: dict[str, Run]  # step name -> the record it produced (last record for deletes)


async def scenario(manager: RunManager, store: RunStore) -> Scenario:
    before = await store.revision()
    revisions: dict[str, int] = {}
    records: dict[str, Run] = {}

    async def step(name: str, run: Run, revision: int | None = None) -> Run:
        revisions[name] = run.mod_revision if revision is None else revision
        records[name] = run
        # Every operation's revision is the store's revision right after it.
        assert await store.revision() == revisions[name]
        return run

    a = await step("create a", (await manager.create_run("t1")).run)
    await step(
        "claim a", (await manager.set_status(a.run_id, RunStatus.RUNNING, worker_id="w")).run
    )
    b = await step(
        "enqueue b",
        (await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)).run,
    )
    x = await step("create x", (await manager.create_run("t2")).run)
    interrupting = await manager.create_run("t1", multitask_strategy=MultitaskStrategy.INTERRUPT)
    c = await step("create c", interrupting.run)
    assert [r.run_id for r in interrupting.interrupted] == [a.run_id, b.run_id]
    records["interrupted a"], records["interrupted b"] = interrupting.interrupted
    await step("claim x", (await manager.set_status(x.run_id, RunStatus.RUNNING)).run)
    await step("finish x", (await manager.set_status(x.run_id, RunStatus.SUCCESS)).run)
    deleted = await manager.delete_run(a.run_id)
    await step("delete a", deleted.run, deleted.revision)
    deleted = await manager.delete_run(x.run_id)
    await step("delete x", deleted.run, deleted.revision)
    await step("claim c", (await manager.set_status(c.run_id, RunStatus.RUNNING)).run)
    failed = (await manager.set_status(c.run_id, RunStatus.ERROR, error="boom")).run
    await step("fail c", failed)
    d = await step("create d", (await manager.create_run("t3", request_id="req-d")).run)
    head = await store.revision()
    # Operations that change nothing take no revision and publish nothing.
    assert not (await manager.set_status(c.run_id, RunStatus.ERROR, error="boom")).changed
    assert not (await manager.cancel_run(c.run_id)).cancelled
    assert (await manager.create_run("t3", request_id="req-d")).replayed
    assert await store.revision() == head
    return Scenario(before, head, a, b, c, x, d, revisions, records)


# -- read_changes / feed_bounds -----------------------------------------------------------


async def test_read_changes_is_ordered_gapless_and_one_change_set_per_operation(
    manager: RunManager, store: RunStore
) -> None:
    s = await scenario(manager, store)
    change_sets = await read_all(store, s.before)
    assert [cs.revision for cs in change_sets] == list(range(s.before + 1, s.head + 1))
    assert sorted(s.revisions.values()) == list(range(s.before + 1, s.head + 1))
    by_revision = {cs.revision: cs for cs in change_sets}

    def changes(step: str) -> list[tuple[ChangeKind, Run, RunStatus | None]]:
        return [(c.kind, c.run, c.prev_status) for c in by_revision[s.revisions[step]].changes]

    r = s.records
    assert changes("create a") == [(ChangeKind.CREATED, r["create a"], None)]
    assert changes("claim a") == [(ChangeKind.UPDATED, r["claim a"], RunStatus.PENDING)]
    # The INTERRUPT create is ONE change set: both interrupts and the create.
    assert changes("create c") == [
        (ChangeKind.UPDATED, r["interrupted a"], RunStatus.RUNNING),
        (ChangeKind.UPDATED, r["interrupted b"], RunStatus.PENDING),
        (ChangeKind.CREATED, r["create c"], None),
    ]
    assert changes("finish x") == [(ChangeKind.UPDATED, r["finish x"], RunStatus.RUNNING)]
    # A deletion carries the run's last record (and its status as prev_status).
    assert r["delete a"] == r["interrupted a"]
    assert changes("delete a") == [(ChangeKind.DELETED, r["interrupted a"], RunStatus.INTERRUPTED)]
    assert changes("delete x") == [(ChangeKind.DELETED, r["finish x"], RunStatus.SUCCESS)]
    assert changes("fail c") == [(ChangeKind.UPDATED, r["fail c"], RunStatus.RUNNING)]
    # Every record written in a change set carries that change set's revision.
    for cs in change_sets:
        for change in cs.changes:
            if change.kind is not ChangeKind.DELETED:
                assert change.run.mod_revision == cs.revision
            else:
                assert change.run.mod_revision < cs.revision

    # The bounds: the head is the store's revision; everything after the compacted
    # revision is served.
    bounds = await store.feed_bounds()
    assert bounds.head_revision == await store.revision() == s.head
    assert bounds.compact_revision <= s.before
    # Nothing after the head.
    assert await store.read_changes(s.head, 100) == []


async def test_read_changes_is_bounded_by_its_limit_and_pages_exactly(
    manager: RunManager, store: RunStore
) -> None:
    s = await scenario(manager, store)
    everything = await read_all(store, s.before)
    for limit in (1, 2, 3, 5):
        pages: list[ChangeSet] = []
        after = s.before
        while True:
            page = list(await store.read_changes(after, limit))
            assert len(page) <= limit
            if not page:
                break
            assert page[0].revision == after + 1  # no gap between pages
            pages += page
            after = page[-1].revision
        assert pages == everything
    # A read is not a consumption: the same read answers the same again.
    assert await read_all(store, s.before) == everything


async def test_read_changes_below_the_compact_revision_raises(
    manager: RunManager, store: RunStore
) -> None:
    for i in range(HISTORY + 6):
        await manager.create_run(f"t{i}")
    head = await store.revision()
    compacted = await store.compact_changes()
    bounds = await store.feed_bounds()
    assert bounds.head_revision == head
    assert compacted == bounds.compact_revision
    assert 1 <= bounds.compact_revision <= head - HISTORY
    for after in (0, bounds.compact_revision - 1):
        with pytest.raises(RevisionCompacted) as info:
            await store.read_changes(after, 10)
        assert info.value.compact_revision == bounds.compact_revision
    # The oldest kept revision and everything after it are still served, gapless.
    kept = await read_all(store, bounds.compact_revision)
    assert [cs.revision for cs in kept] == list(range(bounds.compact_revision + 1, head + 1))
    # Compacting again (e.g. on another replica at the same time) changes nothing.
    twice = await asyncio.gather(store.compact_changes(), store.compact_changes())
    assert list(twice) == [compacted, compacted]
    assert await store.feed_bounds() == bounds


# -- wait_for_changes ---------------------------------------------------------------------


async def test_wait_for_changes_answers_at_once_when_the_head_is_beyond(
    manager: RunManager, store: RunStore
) -> None:
    await manager.create_run("t1")
    await manager.create_run("t2")
    head = await store.revision()
    async with asyncio.timeout(BOUND):  # a 60 s wait that must not be one
        for after in (0, head - 1):
            bounds = await store.wait_for_changes(after, 60)
            assert bounds == await store.feed_bounds()
            assert bounds.head_revision == head
    # A zero timeout is a plain look at the bounds.
    assert (await store.wait_for_changes(head, 0)).head_revision == head


async def test_wait_for_changes_wakes_on_a_commit_by_another_task(
    manager: RunManager, store: RunStore
) -> None:
    head = await store.revision()

    async def commit() -> Run:
        for _ in range(3):
            await asyncio.sleep(0)  # let the waiters start waiting first
        return (await manager.create_run("t1")).run

    async with asyncio.timeout(BOUND):
        # Waiting 60 s each, so returning within the bound means they were woken.
        first, second, run = await asyncio.gather(
            store.wait_for_changes(head, 60), store.wait_for_changes(head, 60), commit()
        )
    assert run.create_revision == head + 1
    assert first.head_revision == second.head_revision == head + 1
    # A wake-up, not a read: the change is still there to read.
    (change_set,) = await store.read_changes(head, 10)
    assert change_set.changes[0].run == run


async def test_wait_for_changes_returns_the_bounds_after_its_timeout(
    manager: RunManager, store: RunStore
) -> None:
    await manager.create_run("t1")
    head = await store.revision()
    async with asyncio.timeout(BOUND):
        bounds = await store.wait_for_changes(head, TINY)
    assert bounds.head_revision == head
    assert bounds.compact_revision <= head


# -- the feed cache -----------------------------------------------------------------------


async def test_the_feed_cache_follows_the_store_in_order(
    started: RunManager, store: RunStore
) -> None:
    s = await scenario(started, store)
    async with asyncio.timeout(BOUND):
        await started.feed.catch_up(s.head)
    history = started.feed.history
    assert history.head_revision >= s.head
    assert list(history.since(s.before + 1)) == await read_all(store, s.before)


async def test_catch_up_waits_for_a_revision_committed_by_another_task(
    started: RunManager, store: RunStore
) -> None:
    async def commit() -> int:
        await asyncio.sleep(0)
        return (await started.create_run("t1")).run.create_revision

    async with asyncio.timeout(BOUND):
        revision = await asyncio.create_task(commit())
        await started.feed.catch_up(revision)
    assert started.feed.history.head_revision >= revision
    (change_set,) = started.feed.history.since(revision, 1)
    assert change_set == (await store.read_changes(revision - 1, 1))[0]
    # Revision 0 (nothing yet) and revisions already seen answer at once.
    async with asyncio.timeout(BOUND):
        await started.feed.catch_up(0)
        await started.feed.catch_up(revision)


async def test_catch_up_to_a_revision_the_store_never_reached_is_invalid(
    started: RunManager, store: RunStore
) -> None:
    await started.create_run("t1")
    head = await store.revision()
    async with asyncio.timeout(BOUND):
        with pytest.raises(InvalidArgument):
            await started.feed.catch_up(head + 1000)
        with await started.watch(WatchFilter()) as watcher:
            with pytest.raises(InvalidArgument):
                await started.seek(watcher, head + 1000)
            with pytest.raises(InvalidArgument):
                await started.seek(watcher, 0)


# -- watchers -----------------------------------------------------------------------------


async def test_a_watcher_delivers_each_revision_as_one_batch_in_order(
    started: RunManager, store: RunStore
) -> None:
    before = await store.revision()
    with await watch_from(started, WatchFilter(), before + 1) as watcher:
        s = await scenario(started, store)
        batches = await collect(watcher, s.head)
    # Unfiltered: every revision, in order, each with all its changes, nothing twice.
    assert [b.revision for b in batches] == list(range(before + 1, s.head + 1))
    assert batches == expected_batches(await read_all(store, before), WatchFilter())
    interrupting = next(b for b in batches if b.revision == s.revisions["create c"])
    assert [(e.type, e.change.run.run_id, e.index) for e in interrupting.events] == [
        (EventType.MODIFIED, s.a.run_id, 0),
        (EventType.MODIFIED, s.b.run_id, 1),
        (EventType.ADDED, s.c.run_id, 2),
    ]
    for batch in batches:
        assert all(event.revision == batch.revision for event in batch.events)


FILTERS = {
    "thread": WatchFilter(thread_id="t1"),
    "running": WatchFilter(statuses=frozenset({RunStatus.RUNNING})),
    "pending-on-t1": WatchFilter(thread_id="t1", statuses=frozenset({RunStatus.PENDING})),
    "terminal": WatchFilter(
        statuses=frozenset({RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.INTERRUPTED})
    ),
}


async def test_filtered_watchers_classify_changes(started: RunManager, store: RunStore) -> None:
    before = await store.revision()
    watchers = {name: await watch_from(started, f, before + 1) for name, f in FILTERS.items()}
    try:
        s = await scenario(started, store)
        seen = {name: await collect(w, s.head) for name, w in watchers.items()}
    finally:
        for watcher in watchers.values():
            watcher.close()
    change_sets = await read_all(store, before)
    for name, watch_filter in FILTERS.items():
        assert seen[name] == expected_batches(change_sets, watch_filter), name

    rev = s.revisions
    a, b, c, x = s.a.run_id, s.b.run_id, s.c.run_id, s.x.run_id
    added, modified, deleted = EventType.ADDED, EventType.MODIFIED, EventType.DELETED
    assert shape(seen["thread"]) == [
        (rev["create a"], [(added, a, 0)]),
        (rev["claim a"], [(modified, a, 0)]),
        (rev["enqueue b"], [(added, b, 0)]),
        (rev["create c"], [(modified, a, 0), (modified, b, 1), (added, c, 2)]),
        (rev["delete a"], [(deleted, a, 0)]),
        (rev["claim c"], [(modified, c, 0)]),
        (rev["fail c"], [(modified, c, 0)]),
    ]
    # Moving into the filter is ADDED, out of it DELETED (with the record that left).
    assert shape(seen["running"]) == [
        (rev["claim a"], [(added, a, 0)]),
        (rev["create c"], [(deleted, a, 0)]),
        (rev["claim x"], [(added, x, 0)]),
        (rev["finish x"], [(deleted, x, 0)]),
        (rev["claim c"], [(added, c, 0)]),
        (rev["fail c"], [(deleted, c, 0)]),
    ]
    assert seen["running"][1].events[0].change.run == s.records["interrupted a"]
    assert shape(seen["pending-on-t1"]) == [
        (rev["create a"], [(added, a, 0)]),
        (rev["claim a"], [(deleted, a, 0)]),
        (rev["enqueue b"], [(added, b, 0)]),
        (rev["create c"], [(deleted, b, 1), (added, c, 2)]),
        (rev["claim c"], [(deleted, c, 0)]),
    ]
    # A finished run moves within "terminal" only when it is deleted.
    assert shape(seen["terminal"]) == [
        (rev["create c"], [(added, a, 0), (added, b, 1)]),
        (rev["finish x"], [(added, x, 0)]),
        (rev["delete a"], [(deleted, a, 0)]),
        (rev["delete x"], [(deleted, x, 0)]),
        (rev["fail c"], [(added, c, 0)]),
    ]


async def test_snapshot_then_seek_is_one_consistent_view_while_another_task_writes(
    started: RunManager, store: RunStore
) -> None:
    for _ in range(3):
        run = (await started.create_run("t")).run
        await started.cancel_run(run.run_id)
    halfway = asyncio.Event()

    async def writer() -> None:
        # At most 4 changes per cycle, 40 in all: the store keeps them all.
        for cycle in range(10):
            run = (await started.create_run("t")).run
            await asyncio.sleep(0)
            await started.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
            await asyncio.sleep(0)
            await started.set_status(run.run_id, RunStatus.SUCCESS, worker_id="w")
            await asyncio.sleep(0)
            if cycle % 2:
                await started.delete_run(run.run_id)
                await asyncio.sleep(0)
            if cycle == 3:
                halfway.set()

    async with asyncio.timeout(BOUND):
        writing = asyncio.create_task(writer())
        await halfway.wait()
        runs, revision = await started.snapshot("t", frozenset())
        watcher = await watch_from(started, WatchFilter(thread_id="t"), revision + 1)
        with watcher:
            await writing
            head = await store.revision()
            batches = await collect(watcher, head)

    assert [r.create_revision for r in runs] == sorted(r.create_revision for r in runs)
    assert all(r.mod_revision <= revision for r in runs)
    # Every write is on thread "t": exactly the revisions after the snapshot, once each.
    assert [b.revision for b in batches] == list(range(revision + 1, head + 1))
    state = {run.run_id: run for run in runs}
    for batch in batches:
        for event in batch.events:
            run = event.change.run
            if event.type is EventType.ADDED:
                assert run.run_id not in state, "a run the snapshot already had"
                state[run.run_id] = run
            elif event.type is EventType.MODIFIED:
                assert state[run.run_id].mod_revision < run.mod_revision == batch.revision
                state[run.run_id] = run
            else:
                assert state.pop(run.run_id) == run, "deleted a record the view never had"
    final, final_revision = await started.snapshot("t", frozenset())
    assert final_revision == head
    assert state == {run.run_id: run for run in final}


async def test_a_new_watcher_resumes_exactly_after_the_last_revision_seen(
    started: RunManager, store: RunStore
) -> None:
    before = await store.revision()
    first_batches_read = asyncio.Event()

    async def writer() -> None:
        for i in range(20):
            run = (await started.create_run(f"t{i}")).run
            await asyncio.sleep(0)
            await started.cancel_run(run.run_id)
            await asyncio.sleep(0)
            if i == 10:
                await first_batches_read.wait()

    async with asyncio.timeout(BOUND):
        writing = asyncio.create_task(writer())
        with await watch_from(started, WatchFilter(), before + 1) as first:
            part1 = [await next_batch(first) for _ in range(5)]
        first_batches_read.set()
        last = part1[-1].revision
        await writing
        head = await store.revision()
        with await watch_from(started, WatchFilter(), last + 1) as second:
            part2 = await collect(second, head)
    assert [b.revision for b in part1 + part2] == list(range(before + 1, head + 1))
    assert part1 + part2 == expected_batches(await read_all(store, before), WatchFilter())


async def test_seek_below_the_compact_revision_raises(started: RunManager, store: RunStore) -> None:
    for i in range(HISTORY + 6):
        await started.create_run(f"t{i}")
    head = await store.revision()
    async with asyncio.timeout(BOUND):
        await started.feed.catch_up(head)
        # One janitor round trims the store's feed and this process's cache to match.
        await started.janitor.sweep()
        bounds = await store.feed_bounds()
        assert 1 <= bounds.compact_revision <= head - HISTORY
        with await started.watch(WatchFilter()) as watcher:
            for revision in (1, bounds.compact_revision):
                with pytest.raises(RevisionCompacted):
                    await started.seek(watcher, revision)
            # The oldest kept revision is served, and everything after it.
            await started.seek(watcher, bounds.compact_revision + 1)
            batches = await collect(watcher, head)
    assert [b.revision for b in batches] == list(range(bounds.compact_revision + 1, head + 1))


# -- wait_run -----------------------------------------------------------------------------


async def test_wait_run_returns_the_terminal_record_when_another_task_finishes_it(
    started: RunManager,
) -> None:
    run = (await started.create_run("t1")).run

    async def finish() -> Run:
        await until(lambda: started.waiters.waiter_count == 1, "the waiter waits")
        await started.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
        return (await started.set_status(run.run_id, RunStatus.ERROR, error="boom")).run

    async with asyncio.timeout(BOUND):
        (record, done), finished = await asyncio.gather(
            started.wait_run(run.run_id, timeout=None), finish()
        )
    assert done
    assert record == finished
    assert (record.status, record.error, record.worker_id) == (RunStatus.ERROR, "boom", "w")
    assert started.waiters.waiter_count == started.waiters.count == 0


async def test_wait_run_timeout_answers_the_current_record(started: RunManager) -> None:
    run = (await started.create_run("t1")).run
    claimed = (await started.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")).run
    async with asyncio.timeout(BOUND):
        record, done = await started.wait_run(run.run_id, timeout=TINY)
    assert not done
    assert record == claimed == await started.get_run(run.run_id)
    assert started.waiters.waiter_count == started.waiters.count == 0


async def test_wait_run_on_a_finished_run_answers_at_once(started: RunManager) -> None:
    run = (await started.create_run("t1")).run
    cancelled = (await started.cancel_run(run.run_id)).run
    async with asyncio.timeout(BOUND):  # no timeout of its own: must not wait at all
        assert await started.wait_run(run.run_id, timeout=None) == (cancelled, True)
        assert await started.wait_run(run.run_id, timeout=0) == (cancelled, True)


async def test_wait_run_on_an_unknown_run(started: RunManager) -> None:
    async with asyncio.timeout(BOUND):
        with pytest.raises(RunNotFound):
            await started.wait_run("nope", timeout=None)
    assert started.waiters.waiter_count == started.waiters.count == 0


async def test_many_waiters_on_one_run_all_wake(started: RunManager) -> None:
    run = (await started.create_run("t1")).run
    waiters = 50
    async with asyncio.timeout(BOUND):
        tasks = [
            asyncio.create_task(started.wait_run(run.run_id, timeout=None)) for _ in range(waiters)
        ]
        await until(lambda: started.waiters.waiter_count == waiters, "every waiter waits")
        # One shared wake-up for the run, however many wait on it.
        assert started.waiters.count == 1
        cancelled = (await started.cancel_run(run.run_id)).run
        results = await asyncio.gather(*tasks)
    assert results == [(cancelled, True)] * waiters
    assert started.waiters.waiter_count == started.waiters.count == 0


# -- the janitor through the manager --------------------------------------------------------


async def test_runs_past_their_deadline_time_out(started: RunManager, store: RunStore) -> None:
    before = await store.revision()
    timed_out = WatchFilter(statuses=frozenset({RunStatus.TIMEOUT}))
    with await watch_from(started, timed_out, before + 1) as watcher:
        endless = (await started.create_run("t-endless")).run
        later = (await started.create_run("t-later", run_timeout=timedelta(hours=1))).run
        pending = (
            await started.create_run("t-pending", run_timeout=timedelta(milliseconds=50))
        ).run
        running = (
            await started.create_run("t-running", run_timeout=timedelta(milliseconds=500))
        ).run
        claimed = (await started.set_status(running.run_id, RunStatus.RUNNING, worker_id="w")).run
        async with asyncio.timeout(BOUND):
            waited = await asyncio.gather(
                started.wait_run(pending.run_id, timeout=None),
                started.wait_run(running.run_id, timeout=None),
            )
            events: list[WatchEvent] = []
            while len(events) < 2:
                events += (await next_batch(watcher)).events
    for (record, done), original in zip(waited, (pending, claimed), strict=True):
        assert done
        assert record.status is RunStatus.TIMEOUT
        assert record.error == "deadline exceeded"
        assert original.deadline is not None and record.updated_at >= original.deadline
        assert (
            record._replace(
                status=original.status,
                error=None,
                updated_at=original.updated_at,
                mod_revision=original.mod_revision,
            )
            == original
        )
    # Each expiry is a change of its own, seen with the status it left.
    by_run = {event.change.run.run_id: event for event in events}
    assert sorted(by_run) == sorted([pending.run_id, running.run_id])
    assert all(event.type is EventType.ADDED for event in events)
    assert by_run[pending.run_id].change.prev_status is RunStatus.PENDING
    assert by_run[running.run_id].change.prev_status is RunStatus.RUNNING
    assert by_run[running.run_id].change.run == waited[1][0]
    assert len({event.revision for event in events}) == 2
    # Runs without a due deadline are untouched.
    assert await started.get_run(endless.run_id) == endless
    assert await started.get_run(later.run_id) == later


async def test_retention_deletes_finished_runs_and_frees_their_request_id(
    store: RunStore,
) -> None:
    async with running(store, retention=timedelta(milliseconds=50)) as manager:
        before = await store.revision()
        with await watch_from(manager, WatchFilter(thread_id="t-ret"), before + 1) as watcher:
            active = (await manager.create_run("t-active", request_id="req-active")).run
            run = (await manager.create_run("t-ret", request_id="req-ret")).run
            done = (await manager.cancel_run(run.run_id)).run
            events: list[WatchEvent] = []
            while not events or events[-1].type is not EventType.DELETED:
                events += (await next_batch(watcher)).events
        assert [(e.type, e.change.run) for e in events] == [
            (EventType.ADDED, run),
            (EventType.MODIFIED, done),
            (EventType.DELETED, done),
        ]
        assert events[-1].change.kind is ChangeKind.DELETED
        with pytest.raises(RunNotFound):
            await manager.get_run(run.run_id)
        with pytest.raises(RunNotFound):
            await manager.wait_run(run.run_id, timeout=0)
        assert (await manager.list_runs(ListQuery(thread_id="t-ret"))).runs == ()
        # Its request_id went with it: the same id now creates a new run.
        again = await manager.create_run("t-ret", request_id="req-ret")
        assert not again.replayed and again.run.run_id != run.run_id
        # Active runs are never retention's business.
        assert await manager.get_run(active.run_id) == active
        assert (await manager.create_run("t-active", request_id="req-active")).replayed


async def _store_time_passes(store: RunStore, moment: datetime) -> None:
    async def passed() -> bool:
        return await store.now() > moment

    await until(passed, f"the store's clock passes {moment}")


async def test_concurrent_expire_due_expires_each_run_once(
    manager: RunManager, store: RunStore
) -> None:
    runs = [
        (await manager.create_run(f"t{i}", run_timeout=timedelta(seconds=1))).run for i in range(6)
    ]
    now = (await store.now()) + timedelta(seconds=10)
    before = await store.revision()
    first, second = await asyncio.gather(store.expire_due(now, 100), store.expire_due(now, 100))
    assert sorted(r.run_id for r in first + second) == sorted(r.run_id for r in runs)
    change_sets = await read_all(store, before)
    assert len(change_sets) == len(runs) == await store.revision() - before
    changes = [change for cs in change_sets for change in cs.changes]
    assert sorted(c.run.run_id for c in changes) == sorted(r.run_id for r in runs)
    assert all(
        (c.kind, c.run.status, c.prev_status)
        == (ChangeKind.UPDATED, RunStatus.TIMEOUT, RunStatus.PENDING)
        for c in changes
    )
    assert await store.expire_due(now, 100) == []


async def test_concurrent_purge_finished_deletes_each_run_once(
    manager: RunManager, store: RunStore
) -> None:
    finished = []
    for i in range(6):
        run = (await manager.create_run(f"t{i}", request_id=f"req-{i}")).run
        finished.append((await manager.cancel_run(run.run_id)).run)
    active = (await manager.create_run("t-active")).run
    cutoff = await store.now()
    before = await store.revision()
    first, second = await asyncio.gather(
        store.purge_finished(cutoff, 100), store.purge_finished(cutoff, 100)
    )
    assert sorted(first + second) == sorted(finished)
    change_sets = await read_all(store, before)
    assert len(change_sets) == len(finished) == await store.revision() - before
    assert sorted(c.run for cs in change_sets for c in cs.changes) == sorted(finished)
    assert all(c.kind is ChangeKind.DELETED for cs in change_sets for c in cs.changes)
    assert await store.purge_finished(cutoff, 100) == []
    assert (await manager.list_runs(ListQuery())).runs == (active,)


async def test_concurrent_janitor_rounds_expire_and_delete_each_run_once(store: RunStore) -> None:
    # Not started: the two rounds below are the only janitor work.
    manager = RunManager(store, retention=timedelta(0))
    due = [
        (await manager.create_run(f"d{i}", run_timeout=timedelta(milliseconds=1))).run
        for i in range(3)
    ]
    finished = []
    for i in range(3):
        run = (await manager.create_run(f"f{i}")).run
        finished.append((await manager.cancel_run(run.run_id)).run)
    before = await store.revision()
    last_deadline = max(run.deadline for run in due if run.deadline is not None)
    await _store_time_passes(store, last_deadline)
    async with asyncio.timeout(BOUND):
        await asyncio.gather(manager.janitor.sweep(), manager.janitor.sweep())
        # Runs that timed out in those rounds may have finished after the rounds' cutoff:
        # once the store's clock is past them, one more round deletes them.
        await _store_time_passes(store, await store.now())
        await manager.janitor.sweep()
    changes = [c for cs in await read_all(store, before) for c in cs.changes]
    counts: dict[tuple[str, ChangeKind], int] = {}
    for change in changes:
        key = (change.run.run_id, change.kind)
        counts[key] = counts.get(key, 0) + 1
    expected = {(run.run_id, ChangeKind.UPDATED): 1 for run in due}
    expected |= {(run.run_id, ChangeKind.DELETED): 1 for run in due + finished}
    assert counts == expected
    assert (await manager.list_runs(ListQuery())).runs == ()
    await manager.close()


# -- the store's clock and creation order ---------------------------------------------------


async def test_the_store_clock_never_goes_backwards(manager: RunManager, store: RunStore) -> None:
    readings = [await store.now()]
    assert readings[0].utcoffset() == timedelta(0)
    for i in range(20):
        run = (await manager.create_run(f"t{i}")).run
        readings.append(run.created_at)
        readings.append(await store.now())
        done = (await manager.cancel_run(run.run_id)).run
        readings.append(done.updated_at)
        readings.append(await store.now())
    assert readings == sorted(readings)
    assert all(reading.utcoffset() == timedelta(0) for reading in readings)


async def test_creation_order_is_revision_order_and_the_clock_agrees(
    manager: RunManager, store: RunStore
) -> None:
    outcomes = await asyncio.gather(*(manager.create_run(f"t{i}") for i in range(32)))
    runs = sorted((o.run for o in outcomes), key=lambda run: run.create_revision)
    assert len({run.create_revision for run in runs}) == len(runs)
    # created_at never decreases in commit order, so (created_at, create_revision) keysets
    # and creation order agree.
    created = [run.created_at for run in runs]
    assert created == sorted(created)
    listed = await manager.list_runs(ListQuery(limit=100))
    assert listed.runs == tuple(reversed(runs))
    paged: list[Run] = []
    query = ListQuery(limit=5)
    while True:
        page = await manager.list_runs(query)
        paged += page.runs
        if page.next_cursor is None:
            break
        query = ListQuery(limit=5, after=page.next_cursor)
    assert paged == list(reversed(runs))


# -- closing ------------------------------------------------------------------------------


async def test_closing_the_manager_twice_and_then_the_store_is_harmless(store: RunStore) -> None:
    manager = RunManager(store)
    await manager.start()
    await manager.create_run("t1")
    async with asyncio.timeout(BOUND):
        await manager.close()
        await manager.close()
        await store.close()  # and the fixture closes it once more
    assert not manager.feed.running
    assert not manager.janitor.running
