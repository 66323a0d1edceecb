"""The watch domain without grpc: the classification table and Watcher over a history."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from runcontrol_server.domain import (
    Change,
    ChangeKind,
    ChangeSet,
    EventType,
    InvalidArgument,
    LimitExceeded,
    RevisionCompacted,
    Run,
    RunStatus,
    ShuttingDown,
    WatchBatch,
    WatchFilter,
    WatchHub,
    classify,
)
from runcontrol_server.domain.history import ChangeHistory
from runcontrol_server.domain.model import DisconnectMode, MultitaskStrategy
from runcontrol_server.domain.watch import READ_CHUNK

P, R, S = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUCCESS
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def run(run_id: str = "r1", status: RunStatus = P, thread_id: str = "t1", rev: int = 1) -> Run:
    return Run(
        run_id=run_id,
        thread_id=thread_id,
        assistant_id=None,
        status=status,
        on_disconnect=DisconnectMode.CANCEL,
        multitask_strategy=MultitaskStrategy.REJECT,
        metadata_json="{}",
        kwargs_json="{}",
        created_at=NOW,
        updated_at=NOW,
        create_revision=1,
        mod_revision=rev,
    )


RUNNING_ONLY = WatchFilter(statuses=frozenset({R}))
ANY = WatchFilter()
CREATED, UPDATED, DELETED = ChangeKind.CREATED, ChangeKind.UPDATED, ChangeKind.DELETED
ADDED, MODIFIED, GONE = EventType.ADDED, EventType.MODIFIED, EventType.DELETED


@pytest.mark.parametrize(
    ("kind", "prev", "now", "watch_filter", "expected"),
    [
        (CREATED, None, P, ANY, ADDED),
        (CREATED, None, P, RUNNING_ONLY, None),
        (UPDATED, P, R, ANY, MODIFIED),
        (UPDATED, P, R, RUNNING_ONLY, ADDED),  # enters the filter
        (UPDATED, R, S, RUNNING_ONLY, GONE),  # leaves the filter
        (UPDATED, P, S, RUNNING_ONLY, None),  # never in it
        (UPDATED, R, R, RUNNING_ONLY, MODIFIED),
        (DELETED, S, S, ANY, GONE),
        (DELETED, S, S, RUNNING_ONLY, None),
        (DELETED, None, R, RUNNING_ONLY, GONE),  # no prev: the run's own status
        (CREATED, None, P, WatchFilter(thread_id="other"), None),
        (UPDATED, P, R, WatchFilter(run_ids=frozenset({"other"})), None),
        (UPDATED, P, R, WatchFilter(thread_id="t1", run_ids=frozenset({"r1"})), MODIFIED),
    ],
)
def test_classify_table(
    kind: ChangeKind,
    prev: RunStatus | None,
    now: RunStatus,
    watch_filter: WatchFilter,
    expected: EventType | None,
) -> None:
    change = Change(kind, run(status=now), prev)
    event = classify(change, watch_filter, revision=7, index=2)
    if expected is None:
        assert event is None
    else:
        assert event is not None
        assert (event.type, event.change, event.revision, event.index) == (expected, change, 7, 2)


class Log:
    """A history plus a writer that appends one change set per revision."""

    def __init__(self, max_changes: int = 100) -> None:
        self.history = ChangeHistory(max_changes=max_changes, max_age=None, now=lambda: NOW)

    def write(self, *changes: Change) -> int:
        revision = self.history.head_revision + 1
        self.history.append(ChangeSet(revision, changes))
        return revision

    def create(self, run_id: str, thread_id: str = "t1") -> int:
        rev = self.history.head_revision + 1
        return self.write(Change(CREATED, run(run_id, P, thread_id, rev), None))


async def next_batch(iterator: object) -> WatchBatch:
    async with asyncio.timeout(2):
        batch: WatchBatch = await anext(iterator)  # type: ignore[call-overload]
    return batch


async def test_watcher_delivers_one_batch_per_matching_revision_in_order() -> None:
    log = Log()
    hub = WatchHub(log.history)
    with hub.watch(WatchFilter(thread_id="t1")) as watcher:
        assert hub.count == 1
        log.create("a")
        log.create("x", thread_id="t2")  # no match: nothing delivered for revision 2
        first_two = Change(UPDATED, run("a", R, rev=3), P)
        log.write(first_two, Change(CREATED, run("b", P, rev=3), None))
        batch = await next_batch(watcher)
        assert batch.revision == 1 and [e.type for e in batch.events] == [ADDED]
        batch = await next_batch(watcher)
        assert batch.revision == 3
        assert [(e.type, e.index) for e in batch.events] == [(MODIFIED, 0), (ADDED, 1)]
        assert watcher.revision == 3
    assert hub.count == 0


async def test_watcher_reads_backlog_beyond_one_chunk_from_history() -> None:
    log = Log(max_changes=3 * READ_CHUNK)
    hub = WatchHub(log.history)
    with hub.watch(ANY) as watcher:
        total = 2 * READ_CHUNK + 5
        for i in range(total):
            log.create(f"r{i}")
        revisions = [(await next_batch(watcher)).revision for _ in range(total)]
    assert revisions == list(range(1, total + 1))


async def test_watcher_wakes_on_append_while_waiting() -> None:
    log = Log()
    hub = WatchHub(log.history)
    with hub.watch(ANY) as watcher:
        pending = asyncio.ensure_future(next_batch(watcher))
        await asyncio.sleep(0)  # let it reach the wait
        assert not pending.done()
        log.create("a")
        assert (await pending).revision == 1


async def test_progress_batch_after_interval_carries_last_processed_revision() -> None:
    log = Log()
    hub = WatchHub(log.history)
    with hub.watch(WatchFilter(thread_id="quiet"), progress_interval=0.01) as watcher:
        log.create("a")
        log.create("b")
        batch = await next_batch(watcher)
        assert batch == WatchBatch(2, progress_only=True)


async def test_compaction_ends_a_watcher_that_fell_behind() -> None:
    log = Log(max_changes=3)
    hub = WatchHub(log.history)
    with hub.watch(ANY) as watcher:
        for i in range(10):
            log.create(f"r{i}")
        with pytest.raises(RevisionCompacted) as raised:
            await next_batch(watcher)
        assert raised.value.compact_revision == 7


async def test_seek_checks_the_kept_range() -> None:
    log = Log(max_changes=3)
    for i in range(5):
        log.create(f"r{i}")
    hub = WatchHub(log.history)
    with hub.watch(ANY) as watcher:
        with pytest.raises(RevisionCompacted):
            watcher.seek(2)
        with pytest.raises(InvalidArgument):
            watcher.seek(7)  # never reached
        with pytest.raises(InvalidArgument):
            watcher.seek(0)
        watcher.seek(3)
        assert [(await next_batch(watcher)).revision for _ in range(3)] == [3, 4, 5]
        watcher.seek(6)  # the next revision: fine, nothing yet
        assert watcher.cursor == 6


async def test_limit_and_close_free_the_slot() -> None:
    hub = WatchHub(Log().history, max_watchers=1)
    watcher = hub.watch(ANY)
    with pytest.raises(LimitExceeded) as raised:
        hub.watch(ANY)
    assert raised.value.limit == "max_watchers"
    watcher.close()
    watcher.close()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await anext(watcher)
    hub.watch(ANY).close()
    assert hub.count == 0


async def test_cancelled_reader_unregisters_and_leaves_other_waiters_intact() -> None:
    log = Log()
    hub = WatchHub(log.history)

    async def consume() -> None:
        with hub.watch(ANY) as watcher:
            async for _ in watcher:
                pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    assert hub.count == 1
    other = asyncio.get_running_loop().create_future()
    log.history.add_waiter(other)
    assert log.history.waiter_count == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.count == 0
    assert log.history.waiter_count == 1  # only the other reader's registration is left
    assert not other.done()
    log.history.remove_waiter(other)
    async with asyncio.timeout(1):
        await hub.wait_closed()


async def test_shutdown_ends_every_watcher_with_its_own_revision() -> None:
    log = Log()
    hub = WatchHub(log.history)
    log.create("a")
    with hub.watch(ANY) as caught_up, hub.watch(ANY) as behind:
        behind.seek(1)
        waiting = asyncio.ensure_future(next_batch(caught_up))
        await asyncio.sleep(0)
        hub.shutdown()
        hub.shutdown()  # idempotent
        with pytest.raises(ShuttingDown) as raised:
            await waiting
        assert raised.value.revision == 1
        with pytest.raises(ShuttingDown) as raised:
            await next_batch(behind)
        assert raised.value.revision == 0  # it had delivered nothing yet
        with pytest.raises(ShuttingDown):
            hub.watch(ANY)


def test_hub_rejects_bad_limits() -> None:
    history = Log().history
    with pytest.raises(ValueError, match="max_watchers"):
        WatchHub(history, max_watchers=0)
    with pytest.raises(ValueError, match="progress_interval"):
        WatchHub(history, progress_interval=0)
