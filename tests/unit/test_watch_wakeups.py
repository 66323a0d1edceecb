"""How caught-up watchers wait: their own futures registered with the history, one lazy
progress timer each, batches shared by the watchers of one filter."""

from __future__ import annotations

import asyncio
import math
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
TICK = 2**-10  # a short step of the stopped loop clock, exact in binary
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


async def settle() -> None:
    """Let every ready callback and task run. Nothing here does I/O, so a few loop
    turns are enough for whatever a change or a timer set off to finish."""
    for _ in range(10):
        await asyncio.sleep(0)


async def waiting(watcher: Watcher) -> asyncio.Task[WatchBatch]:
    """A task reading the next batch, once it waits (caught up, registered)."""
    task = asyncio.ensure_future(anext(watcher))
    await settle()
    assert watcher.timer_armed, "the reader does not wait"
    return task


class LoopClock:
    """The running loop's clock, stopped: it moves only by `advance`, so a timer fires
    exactly when a test moves the clock past it, never because the machine is slow."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        # A whole second: with steps of 1/2**n seconds every reading is exact.
        self.now = float(math.ceil(loop.time()))
        # asyncio schedules and fires every timer by `loop.time()`.
        monkeypatch.setattr(loop, "time", lambda: self.now)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        await settle()


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> LoopClock:
    return LoopClock(monkeypatch)


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
        await settle()
        assert history.waiter_count == 1, "the reader does not wait again"
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


async def test_progress_batch_after_the_interval_without_traffic_and_not_before(
    clock: LoopClock,
) -> None:
    history = new_history()
    hub = WatchHub(history)
    interval = 0.125
    with hub.watch(ANY, progress_interval=interval) as watcher:
        for _ in range(2):  # the first interval, then the next one, counted from there
            task = await waiting(watcher)
            await clock.advance(interval - TICK)
            assert not task.done(), "a progress batch before the interval passed"
            await clock.advance(TICK)
            assert task.done(), "no progress batch once the interval passed"
            assert task.result() == WatchBatch(0, progress_only=True)
        assert history.waiter_count == 0


async def test_no_progress_batch_under_steady_traffic_and_one_timer_per_interval(
    monkeypatch: pytest.MonkeyPatch, clock: LoopClock
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
    interval = 1.0
    step = interval / 8  # exact in binary: the clock lands on every deadline exactly
    received: list[tuple[float, WatchBatch]] = []

    async def read(watcher: Watcher) -> None:
        async for batch in watcher:
            received.append((loop.time(), batch))

    with hub.watch(ANY, progress_interval=interval) as watcher:
        reader = asyncio.ensure_future(read(watcher))
        await settle()
        changes = 3 * 8  # a change every eighth of an interval, for three intervals
        for _ in range(changes):
            create(history)
            await settle()
            await clock.advance(step)
        assert len(received) == changes, "every change is delivered as it happens"
        assert not [batch for _, batch in received if batch.progress_only]
        # Armed once, then re-armed once per interval that passed: not once per change.
        assert 1 <= timers <= 4, (timers, changes)

        # Traffic stops: the progress batch comes one interval after the last delivery,
        # not before.
        last_delivery = received[-1][0]
        await clock.advance(last_delivery + interval - clock.now - step / 2)
        assert len(received) == changes, "a progress batch before the interval passed"
        await clock.advance(step / 2)
        at, progress = received[-1]
        assert progress == WatchBatch(history.head_revision, progress_only=True)
        assert at == last_delivery + interval
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert not watcher.timer_armed and history.waiter_count == 0


async def test_timer_firing_while_the_reader_is_busy_leaves_the_progress_to_the_next_read(
    clock: LoopClock,
) -> None:
    history = new_history()
    hub = WatchHub(history)
    with hub.watch(ANY, progress_interval=0.125) as watcher:
        create(history)
        task = asyncio.ensure_future(anext(watcher))
        assert (await task).revision == 1
        # That read did not wait, so no timer yet; this one waits and arms it.
        assert not watcher.timer_armed
        task = await waiting(watcher)
        create(history)
        assert (await task).revision == 2
        assert watcher.timer_armed  # still pending while nobody reads
        # Busy (not reading) past the deadline: the timer fires and finds no waiter.
        await clock.advance(0.25)
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
