"""Watchers filtered by thread wait under their thread: a change wakes only the watchers
of the threads it touches, and a watcher woken later skips the revisions of other
threads exactly as if it had looked at each of them and found nothing."""

from __future__ import annotations

import asyncio

import pytest

from runcontrol_server.domain import (
    Change,
    ChangeKind,
    ChangeSet,
    RevisionCompacted,
    RunStatus,
    ShuttingDown,
    WatchBatch,
    WatchFilter,
    WatchHub,
)

from .test_watch_wakeups import (
    LoopClock,
    clock,  # noqa: F401 - the fixture
    create,
    new_history,
    run,
    settle,
    waiting,
)

T1 = WatchFilter(thread_id="t1")


async def test_a_change_wakes_only_the_watchers_of_its_thread() -> None:
    history = new_history()
    hub = WatchHub(history)
    with (
        hub.watch(T1) as one,
        hub.watch(WatchFilter(thread_id="t2")) as two,
        hub.watch(WatchFilter()) as every,
    ):
        tasks = [await waiting(w) for w in (one, two, every)]
        assert history.waiter_count == 3
        create(history, "t2")  # wakes t2's watcher and the unfiltered one, not t1's
        assert history.waiter_count == 1
        await settle()
        assert [t.done() for t in tasks[1:]] == [True, True] and not tasks[0].done()
        assert (await tasks[1]).revision == 1 and (await tasks[2]).revision == 1
        for _ in range(3):
            create(history, "t2")
        await settle()
        assert not tasks[0].done() and one.cursor == 1  # never woken, never moved
        revision = create(history, "t1")
        batch = await asyncio.wait_for(tasks[0], 1)
        assert batch.revision == revision == 5 and one.revision == 5
        assert [e.change.run.thread_id for e in batch.events] == ["t1"]
    assert history.waiter_count == 0


async def test_a_change_set_of_several_threads_wakes_each_thread_once() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(T1) as one, hub.watch(WatchFilter(thread_id="t2")) as two:
        tasks = [await waiting(one), await waiting(two)]
        create(history, "t3")
        changes = (
            Change(ChangeKind.CREATED, run("a", "t1", 2), None),
            Change(ChangeKind.CREATED, run("b", "t2", 2), None),
            Change(ChangeKind.UPDATED, run("a", "t1", 2), RunStatus.PENDING),
        )
        history.append(ChangeSet(2, changes))
        first, second = await asyncio.wait_for(asyncio.gather(*tasks), 1)
        assert (first.revision, [e.index for e in first.events]) == (2, [0, 2])
        assert (second.revision, [e.index for e in second.events]) == (2, [1])
    assert history.waiter_count == 0


async def test_progress_after_changes_of_other_threads_reports_the_head(
    clock: LoopClock,  # noqa: F811 - the fixture
) -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(T1, progress_interval=0.125) as watcher:
        task = await waiting(watcher)
        for _ in range(3):
            create(history, "t2")
        await clock.advance(0.125)
        assert await asyncio.wait_for(task, 1) == WatchBatch(3, progress_only=True)
        assert watcher.cursor == 4 and history.waiter_count == 0
        # A change of its thread right after the timer is seen as usual.
        task = await waiting(watcher)
        assert (create(history, "t1"), (await asyncio.wait_for(task, 1)).revision) == (4, 4)


async def test_shutdown_reports_the_head_to_a_watcher_of_a_quiet_thread() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(T1) as watcher:
        task = await waiting(watcher)
        create(history, "t2")
        create(history, "t2")
        hub.shutdown()
        with pytest.raises(ShuttingDown) as raised:
            await asyncio.wait_for(task, 1)
        assert raised.value.revision == 2


async def test_a_restarted_history_lets_no_watcher_skip_past_the_gap() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(T1) as watcher:
        task = await waiting(watcher)
        create(history, "t2")
        history.reset(10)  # as a feed cache does when it fell behind the store
        history.wake()
        with pytest.raises(RevisionCompacted):
            await asyncio.wait_for(task, 1)


async def test_watchers_of_one_thread_wait_together_and_leave_one_by_one() -> None:
    history = new_history()
    hub = WatchHub(history)
    first, second = hub.watch(T1), hub.watch(T1)
    tasks = [await waiting(first), await waiting(second)]
    assert history.waiter_count == 2
    first.close()  # the other one stays registered under the thread
    assert history.waiter_count == 1
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(tasks[0], 1)
    revision = create(history, "t1")
    assert (await asyncio.wait_for(tasks[1], 1)).revision == revision
    second.close()
    assert history.waiter_count == 0 and hub.count == 0
