"""This process's watch cache: the store's change feed, followed by ONE reader.

The Kubernetes watch-cache pattern: a single task per process reads the store's change
feed (`RunStore.read_changes`, woken by `RunStore.wait_for_changes`) in bounded batches
and appends each change set to a local `ChangeHistory`. Every watcher, waiter and the
janitor read that history, so a thousand watchers on a replica cost the database one
reader, and a change committed by any replica reaches every process the same way.

The cache may lag the store by the time one read takes. Whoever needs a revision the
cache has not reached yet (a watch that starts where a snapshot or another replica left
off) waits for it with `catch_up`, bounded, instead of refusing it.

When the cache falls so far behind that the store no longer keeps the next revision
(a replica cut off from its database for longer than the feed's retention), it starts
again at the store's oldest kept revision: watchers behind that point end with
REVISION_COMPACTED (their clients re-list, as after any compaction) and `on_resync`
callbacks let waiters re-read what they wait for.

A store that lives in this process (`RunStore.local_history`, the in-memory store)
lends its own history instead: there is nothing to follow, so no reader runs and the
cache is never behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from .errors import InvalidArgument, RevisionCompacted, StoreUnavailable
from .history import DEFAULT_MAX_CHANGES, ChangeHistory
from .store import RunStore
from .tasks import stop_task

log = logging.getLogger(__name__)

# Change sets read from the store per round trip: bounds one read's memory and latency.
READ_BATCH = 1000
# How long the reader waits for a wake-up before asking the store again anyway: the
# safety net under a lost notification; each wait is one cheap question to the store.
POLL_INTERVAL = 1.0
# How long a watch may wait for the cache to reach the revision it starts at.
DEFAULT_CATCH_UP_TIMEOUT = 10.0
# After a failed read, wait this long (doubling up to the cap) before trying again.
RETRY_DELAY = 0.05
RETRY_DELAY_MAX = 2.0


class FeedCache:
    """The local, bounded window onto the store's change feed, kept current by one task."""

    def __init__(
        self,
        store: RunStore,
        *,
        max_changes: int = DEFAULT_MAX_CHANGES,
        catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        read_batch: int = READ_BATCH,
    ) -> None:
        self._store = store
        local = store.local_history()
        # The store's own history when it is in this process (bounded by the store).
        self._local = local is not None
        # Else bounded by count here; beyond that it drops what the store compacts (by
        # the store's count and age bounds), so it never serves a revision the store no
        # longer keeps: REVISION_COMPACTED means the same on every replica.
        self.history = (
            local
            if local is not None
            else ChangeHistory(
                max_changes=max_changes, max_age=None, now=functools.partial(datetime.now, UTC)
            )
        )
        self._max_changes = max_changes
        self.catch_up_timeout = catch_up_timeout
        self._poll_interval = poll_interval
        self._read_batch = read_batch
        self._task: asyncio.Task[None] | None = None
        self._following = False
        self._primed: asyncio.Event | None = None
        self._resync_callbacks: list[Callable[[], None]] = []
        self.resyncs = 0  # times the cache restarted past a gap (for tests and metrics)

    @property
    def running(self) -> bool:
        if self._local:
            return self._following
        return self._task is not None and not self._task.done()

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call `callback` after the cache restarted past changes it never saw."""
        self._resync_callbacks.append(callback)

    def start(self) -> None:
        """Start following the feed (idempotent). Needs a running event loop."""
        if self._local:
            if self._primed is None:
                self._primed = asyncio.Event()
                self._primed.set()
            self._following = True
            return
        if self._task is None:
            self._primed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name="runcontrol-feed"
            )

    async def stop(self) -> None:
        """Stop following (idempotent); waiting readers are woken to look again."""
        task, self._task = self._task, None
        following, self._following = self._following, False
        if task is not None:
            await stop_task(task)
        elif not following:
            return
        self.history.wake()

    async def ready(self) -> None:
        """Start following if needed and return once the cache holds the store's
        window as it was at start (so a resume at a kept revision is served)."""
        self.start()
        assert self._primed is not None
        await self._primed.wait()

    async def catch_up(self, revision: int, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once the cache has seen `revision` (0: at once).

        Raises InvalidArgument when the store itself has never reached `revision` (e.g.
        an in-memory server that restarted), StoreUnavailable when the cache does not
        get there within `timeout` (default `catch_up_timeout`) seconds.
        """
        await self.ready()
        history = self.history
        if history.head_revision >= revision:
            return
        head = (await self._store.feed_bounds()).head_revision
        if revision > head:
            # Not a lag: the store has never been there.
            raise InvalidArgument(
                "start_revision", f"is after the next revision {head + 1} of this server"
            )
        loop = asyncio.get_running_loop()
        limit = self.catch_up_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        while history.head_revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.running:
                raise StoreUnavailable(
                    f"the change feed has not reached revision {revision} within {limit:g}s"
                )
            waiter = loop.create_future()
            history.add_waiter(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                history.remove_waiter(waiter)

    # -- the one reader ------------------------------------------------------------

    async def _follow(self) -> None:
        delay = RETRY_DELAY
        primed = False
        while True:
            try:
                if not primed:
                    await self._prime()
                    primed = True
                    assert self._primed is not None
                    self._primed.set()
                await self._read_more()
                delay = RETRY_DELAY
            except asyncio.CancelledError:
                raise
            except RevisionCompacted:
                log.warning(
                    "change feed compacted past this process's cache at revision %d; "
                    "restarting the cache",
                    self.history.head_revision,
                )
                primed = False
            except Exception as error:
                # The store is unreachable (or failing): watchers keep their cursors and
                # get progress messages; the reader retries with a growing pause. An
                # outage is expected (no traceback); anything else is a bug.
                log.warning(
                    "reading the change feed failed (%s); retrying in %.2fs",
                    error,
                    delay,
                    exc_info=not isinstance(error, StoreUnavailable),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX)

    async def _prime(self) -> None:
        """Start at the newest `max_changes` revisions the store keeps, read them in."""
        bounds = await self._store.feed_bounds()
        start = max(bounds.compact_revision, bounds.head_revision - self._max_changes)
        history = self.history
        resync = history.head_revision != 0 or len(history) != 0
        if resync or start != history.head_revision:
            history.reset(start)
        while history.head_revision < bounds.head_revision:
            if not await self._read_batch_once():
                break
        if resync:
            self.resyncs += 1
            history.wake()
            for callback in self._resync_callbacks:
                callback()

    async def _read_more(self) -> None:
        history = self.history
        head = history.head_revision
        bounds = await self._store.wait_for_changes(head, self._poll_interval)
        history.compact_to(bounds.compact_revision)
        if bounds.head_revision > head:
            while await self._read_batch_once():
                pass

    async def _read_batch_once(self) -> bool:
        """Append the next batch; True when it was full (there may be more)."""
        history = self.history
        batch = await self._store.read_changes(history.head_revision, self._read_batch)
        for change_set in batch:
            if change_set.revision > history.head_revision:
                history.append(change_set)
        return len(batch) >= self._read_batch
