"""The feed cache's one reader: it catches up, survives failures, restarts past gaps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from _streams import until

from runcontrol_server.domain import ChangeSet, RunManager
from runcontrol_server.domain.errors import InvalidArgument, StoreUnavailable
from runcontrol_server.domain.feed import FeedCache
from runcontrol_server.stores.memory import InMemoryRunStore


class FlakyStore(InMemoryRunStore):
    """Fails `read_changes` while `failures` is positive (an outage), counting reads."""

    def __init__(self, history_limit: int = 1000) -> None:
        # Its feed read like a database's, through the reader under test.
        super().__init__(history_limit=history_limit, local_feed=False)
        self.failures = 0
        self.blocked = False
        self.reads = 0

    async def read_changes(self, after: int, limit: int) -> Sequence[ChangeSet]:
        self.reads += 1
        if self.blocked:
            raise StoreUnavailable("database unavailable: blocked by the test")
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database unavailable: 57P01")
        return await super().read_changes(after, limit)


async def test_the_reader_retries_through_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    manager = RunManager(store)
    await manager.start()
    try:
        store.failures = 3
        with caplog.at_level(logging.WARNING, logger="runcontrol_server.domain.feed"):
            run = (await manager.create_run("t1")).run
            await until(
                lambda: manager.feed.history.head_revision == run.create_revision,
                "the cache caught up after the outage",
            )
        warnings = [r for r in caplog.records if "reading the change feed failed" in r.message]
        assert len(warnings) == 3 and not any(r.exc_info for r in warnings)
    finally:
        await manager.close()


async def test_catch_up_is_bounded_and_says_unavailable() -> None:
    store = FlakyStore()
    manager = RunManager(store)
    await manager.start()
    try:
        store.blocked = True
        run = (await manager.create_run("t1")).run
        with pytest.raises(StoreUnavailable, match="has not reached revision 1"):
            await manager.feed.catch_up(run.create_revision, timeout=0.05)
        with pytest.raises(InvalidArgument):
            await manager.feed.catch_up(run.create_revision + 1)  # never reached at all
        store.blocked = False
        await manager.feed.catch_up(run.create_revision)
    finally:
        await manager.close()


async def test_a_cache_left_behind_the_feed_restarts_and_wakes_waiters() -> None:
    store = FlakyStore(history_limit=4)
    manager = RunManager(store, history_size=4)
    await manager.start()
    try:
        run = (await manager.create_run("waited")).run
        waiting = asyncio.ensure_future(manager.wait_run(run.run_id, timeout=30))
        await until(lambda: manager.waiters.waiter_count == 1, "the wait is registered")
        store.blocked = True  # the reader falls behind ...
        for i in range(10):  # ... while the feed compacts past it
            await manager.create_run(f"t{i}")
        await manager.cancel_run(run.run_id)  # the waited-on end falls in the gap
        store.blocked = False
        cache = manager.feed
        await until(lambda: cache.resyncs == 1, "the cache restarted past the gap")
        finished, done = await asyncio.wait_for(waiting, 10)
        assert done and finished.run_id == run.run_id
        assert cache.history.head_revision == await store.revision()
    finally:
        await manager.close()


def test_the_cache_needs_a_running_loop_only_when_started() -> None:
    cache = FeedCache(InMemoryRunStore())  # no loop here: nothing is started
    assert not cache.running


async def test_an_in_process_store_lends_its_history_and_no_reader_runs() -> None:
    store = InMemoryRunStore()
    manager = RunManager(store)
    await manager.start()
    try:
        assert manager.feed.history is store.local_history()
        assert manager.feed.running
        run = (await manager.create_run("t1")).run
        # In the cache when the write returns: nothing to follow, nothing to wait for.
        assert manager.feed.history.head_revision == run.create_revision
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "runcontrol-feed"]
        await manager.feed.catch_up(run.create_revision)
        with pytest.raises(InvalidArgument):
            await manager.feed.catch_up(run.create_revision + 1)
    finally:
        await manager.close()
    assert not manager.feed.running
