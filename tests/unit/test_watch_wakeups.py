"""How caught-up watchers wait: their own futures registered with the history, one lazy
progress timer each, batches shared by the watchers of one filter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from runcontrol_server.domain import (
    Change,
    ChangeKind,
    ChangeSet,
    RevisionCompacted,
    Run,
    RunStatus,
    ShuttingDown,
    WatchBatch,
    WatchFilter,
    WatchHub,
)
from runcontrol_server.domain.history import ChangeHistory
from runcontrol_server.domain.model import DisconnectMode, MultitaskStrategy
from runcontrol_server.domain.watch import Watcher
from runcontrol_server.servicer.watch import EventEncoder

NOW = datetime(2024, 1, 1, tzinfo=UTC)
ANY = WatchFilter()


def run(run_id: str, thread_id: str = "t1", rev: int = 1) -> Run:
    return Run(
        run_id=run_id,
        thread_id=thread_id,
        assistant_id=None,
        status=RunStatus.PENDING,
        on_disconnect=DisconnectMode.CANCEL,
        multitask_strategy=MultitaskStrategy.REJECT,
        metadata_json="{}",
        kwargs_json="{}",
        created_at=NOW,
        updated_at=NOW,
        create_revision=rev,
        mod_revision=rev,
    )


def new_history(max_changes: int = 100) -> ChangeHistory:
    return ChangeHistory(max_changes=max_changes, max_age=None, now=lambda: NOW)


def create(history: ChangeHistory, thread_id: str = "t1") -> int:
    revision = history.head_revision + 1
    change = Change(ChangeKind.CREATED, run(f"r{revision}", thread_id, revision), None)
    history.append(ChangeSet(revision, (change,)))
    return revision


async def until(condition: Callable[[], bool], what: str, within: float = 2.0) -> None:
    """Bounded wait for state no event announces (e.g. a reader now waiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def waiting(watcher: Watcher) -> asyncio.Task[WatchBatch]:
    """A task reading the next batch, once it waits (caught up, registered)."""
    task = asyncio.ensure_future(anext(watcher))
    await until(lambda: watcher.timer_armed, "the reader waits")
    return task


# --- the history's waiter registry -----------------------------------------------------


async def test_append_resolves_every_registered_waiter_once_and_forgets_them() -> None:
    history = new_history()
    loop = asyncio.get_running_loop()
    waiters = [loop.create_future() for _ in range(3)]
    cancelled, done = loop.create_future(), loop.create_future()
    for waiter in (*waiters, cancelled, done):
        history.add_waiter(waiter)
    cancelled.cancel()
    done.set_result(None)
    assert history.waiter_count == 5

    create(history)  # resolves the pending ones, skips the cancelled and the done one

    assert all(w.done() and w.result() is None for w in waiters)
    assert history.waiter_count == 0
    late = loop.create_future()
    history.add_waiter(late)
    history.remove_waiter(late)
    history.remove_waiter(late)  # not registered: a no-op
    create(history)
    assert not late.done() and history.waiter_count == 0


async def test_wake_resolves_waiters_without_an_append() -> None:
    history = new_history()
    waiter = asyncio.get_running_loop().create_future()
    history.add_waiter(waiter)
    history.wake()
    assert waiter.done() and history.waiter_count == 0 and history.head_revision == 0
    history.wake()  # nothing registered: nothing to do


def test_since_for_a_caught_up_reader_is_the_newest_change_set() -> None:
    history = new_history(max_changes=5)
    for _ in range(8):
        create(history)
    head = history.head_revision
    kept = {cs.revision: cs for cs in history.since(history.compact_revision + 1)}
    assert [cs.revision for cs in history.since(head)] == [head]
    assert history.since(head)[0] is kept[head]
    assert list(history.since(head, 1)) == [kept[head]]
    assert list(history.since(head, 0)) == []
    assert list(history.since(head + 1)) == []
    for revision in range(history.compact_revision + 1, head + 1):
        assert [cs.revision for cs in history.since(revision)] == list(range(revision, head + 1))
        assert [cs.revision for cs in history.since(revision, 2)] == list(
            range(revision, min(revision + 2, head + 1))
        )
    with pytest.raises(RevisionCompacted):
        history.since(history.compact_revision)
    history.reset(20)
    with pytest.raises(RevisionCompacted):
        history.since(20)  # the head, but nothing is kept
    assert list(history.since(21)) == []


# --- watchers wait on their own futures ----------------------------------------------


async def test_cancelled_waits_leave_no_waiter_registered() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(ANY) as first, hub.watch(ANY) as second:
        tasks = [await waiting(first), await waiting(second)]
        assert history.waiter_count == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)
        assert history.waiter_count == 0
        # Still usable after a cancelled wait: the next change is delivered.
        reading = asyncio.ensure_future(anext(first))
        await until(lambda: history.waiter_count == 1, "the reader waits again")
        create(history)
        assert (await reading).revision == 1
    assert history.waiter_count == 0 and hub.count == 0


async def test_close_wakes_the_reader_unregisters_its_waiter_and_cancels_the_timer() -> None:
    history = new_history()
    hub = WatchHub(history)
    watcher = hub.watch(ANY)
    task = await waiting(watcher)
    timer: Any = watcher._timer
    assert timer is not None and not timer.cancelled()
    assert history.waiter_count == 1 and hub.filter_count == 1

    watcher.close()

    assert history.waiter_count == 0
    assert timer.cancelled() and not watcher.timer_armed
    assert hub.count == 0 and hub.filter_count == 0
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 1)
    loop: Any = asyncio.get_running_loop()
    # No live timer of this watcher is left on the loop.
    assert not [
        h
        for h in loop._scheduled
        if not h.cancelled()
        and getattr(h, "_callback", None)
        and getattr(h._callback, "__self__", None) is watcher
    ]


async def test_close_right_after_a_wake_up_ends_the_reader_before_it_reads() -> None:
    history = new_history()
    hub = WatchHub(history)
    watcher = hub.watch(ANY)
    task = await waiting(watcher)
    create(history)  # resolves its future; the reader has not run yet
    watcher.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 1)
    assert history.waiter_count == 0 and not watcher.timer_armed


async def test_shutdown_reaches_waiting_watchers_through_their_own_futures() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(ANY) as watcher:
        task = await waiting(watcher)
        assert not hub.shutting_down
        hub.shutdown()
        assert hub.shutting_down
        assert history.waiter_count == 0
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(task, 1)
    assert not watcher.timer_armed


# --- progress without a timer per wait ------------------------------------------------


async def test_progress_batch_after_the_interval_without_traffic_and_not_before() -> None:
    history = new_history()
    hub = WatchHub(history)
    loop = asyncio.get_running_loop()
    interval = 0.1
    with hub.watch(ANY, progress_interval=interval) as watcher:
        started = loop.time()
        batch = await asyncio.wait_for(anext(watcher), 2)
        elapsed = loop.time() - started
        assert batch == WatchBatch(0, progress_only=True)
        assert elapsed >= interval - 0.01
        # And again, one interval later.
        started = loop.time()
        batch = await asyncio.wait_for(anext(watcher), 2)
        assert batch == WatchBatch(0, progress_only=True)
        assert loop.time() - started >= interval - 0.01
        assert history.waiter_count == 0


async def test_no_progress_batch_under_steady_traffic_and_one_timer_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = new_history(max_changes=1000)
    hub = WatchHub(history)
    loop = asyncio.get_running_loop()
    timers = 0
    call_later = loop.call_later

    def counting_call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        nonlocal timers
        if getattr(callback, "__func__", None) is Watcher._progress_due:
            timers += 1
        return call_later(delay, callback, *args)

    monkeypatch.setattr(loop, "call_later", counting_call_later)
    interval = 0.2
    received: list[tuple[float, WatchBatch]] = []

    async def read(watcher: Watcher) -> None:
        async for batch in watcher:
            received.append((loop.time(), batch))

    with hub.watch(ANY, progress_interval=interval) as watcher:
        reader = asyncio.ensure_future(read(watcher))
        changes = 0
        steady_until = loop.time() + 3 * interval
        while loop.time() < steady_until:
            create(history)
            changes += 1
            await asyncio.sleep(interval / 10)
        await until(lambda: len(received) == changes, "every change is delivered")
        assert not [batch for _, batch in received if batch.progress_only]
        # The timer is re-armed about once per interval, not once per change.
        assert changes > 10
        assert 1 <= timers <= 6, (timers, changes)

        # Traffic stops: the progress batch comes one interval after the last delivery.
        last_delivery = received[-1][0]
        await until(lambda: received[-1][1].progress_only, "a progress batch", 5 * interval)
        at, progress = received[-1]
        assert progress == WatchBatch(history.head_revision, progress_only=True)
        assert at - last_delivery >= interval - 0.01
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert not watcher.timer_armed and history.waiter_count == 0


async def test_timer_firing_while_the_reader_is_busy_leaves_the_progress_to_the_next_read() -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(ANY, progress_interval=0.05) as watcher:
        create(history)
        task = asyncio.ensure_future(anext(watcher))
        assert (await task).revision == 1
        # That read did not wait, so no timer yet; this one waits and arms it.
        assert not watcher.timer_armed
        task = await waiting(watcher)
        create(history)
        assert (await task).revision == 2
        # Busy (not reading) past the deadline: the timer fires and finds no waiter.
        await asyncio.sleep(0.15)
        assert not watcher.timer_armed
        assert await asyncio.wait_for(anext(watcher), 1) == WatchBatch(2, progress_only=True)


async def test_timer_after_close_does_nothing() -> None:
    history = new_history()
    hub = WatchHub(history)
    watcher = hub.watch(ANY, progress_interval=0.05)
    watcher.close()
    watcher._progress_due()  # as if it had fired concurrently with close
    assert not watcher.timer_armed


# --- batches shared by the watchers of one filter --------------------------------------


async def test_watchers_of_equal_filters_share_the_batch_and_its_encoding() -> None:
    history = new_history()
    hub = WatchHub(history)
    encoder = EventEncoder()
    with (
        hub.watch(WatchFilter(thread_id="t1")) as one,
        hub.watch(WatchFilter(thread_id="t1")) as two,
        hub.watch(WatchFilter(thread_id="t2")) as other,
    ):
        assert hub.filter_count == 2
        create(history, "t1")
        create(history, "t2")
        first, second = await anext(one), await anext(two)
        assert first is second and first.revision == 1
        assert (await anext(other)).revision == 2
        data = encoder.encode_batch(first)
        assert encoder.encode_batch(second) is data
        assert EventEncoder().encode_batch(first) == data
        # A batch of equal content from another filter: encoded once, by content.
        assert encoder.encode_batch(WatchBatch(1, first.events)) == data
        assert len(encoder) == 1
    assert hub.filter_count == 0
