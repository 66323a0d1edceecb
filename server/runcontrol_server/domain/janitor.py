"""The janitor: ONE task for every deadline, lease, for retention and change-feed trimming.

Each round it expires active runs past their deadline (TIMEOUT), ends the claims of
workers whose lease lapsed (back to PENDING or ERROR "worker lost"), deletes runs that
finished more than `retention` ago (DELETED; their request_id goes with them) and
trims the change feed and this process's cache of it, then sleeps until the next
thing falls due. Every replica runs one; the store makes each step take effect once.
Time is the store's clock, never this process's. There is no task or timer per run:
the store keeps deadlines and finished runs in time order, so a round costs what it
removes, and the next due time is two cheap reads.

A listener on the feed cache (every replica's changes) pokes the sleeping janitor
only when a change brings the next due time *earlier* than the one it sleeps for (a
new run with an earlier deadline, the first run to finish while nothing else is
pending); a busy store does not wake it once per change. Work is done in bounded
batches with a yield to the event loop between them, so 100,000 expiries never stall
other calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from .errors import StoreUnavailable
from .feed import FeedCache
from .model import ChangeKind, ChangeSet
from .store import RunStore
from .tasks import stop_task

log = logging.getLogger(__name__)

# The original registry's `cleanup(run_id, delay=300)` default, which it never called:
# here it applies to every finished run.
DEFAULT_RETENTION = timedelta(seconds=300)
DEFAULT_BATCH = 1000
# History prunes itself on every write; this bounds how long an idle store keeps
# aged change sets (the history does not say when its oldest entry falls due).
DEFAULT_PRUNE_INTERVAL = timedelta(seconds=5)
ERROR_BACKOFF = 1.0
_EARLY_WAKE_MARGIN = 0.001  # timers may fire a hair early; don't spin on that


class Janitor:
    def __init__(
        self,
        store: RunStore,
        feed: FeedCache,
        *,
        retention: timedelta | None = DEFAULT_RETENTION,
        batch: int = DEFAULT_BATCH,
        prune_interval: timedelta = DEFAULT_PRUNE_INTERVAL,
        error_backoff: float = ERROR_BACKOFF,
    ) -> None:
        """`retention` None keeps finished runs forever."""
        if retention is not None and retention < timedelta(0):
            raise ValueError("retention must not be negative")
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if prune_interval <= timedelta(0):
            raise ValueError("prune_interval must be positive")
        self._store = store
        self._feed = feed
        self._retention = retention
        self._batch = batch
        self._prune_interval = prune_interval
        self._error_backoff = error_backoff
        self._task: asyncio.Task[None] | None = None
        # The sleeping loop waits on `_wake` until `_target`; a poke resolves it early.
        self._wake: asyncio.Future[None] | None = None
        self._target: datetime | None = None  # None while sweeping
        # The earliest due time announced while sweeping (a store that awaits I/O can
        # see changes mid-round); the round's sleep is cut short to it.
        self._noted: datetime | None = None
        self._swept_at = datetime.min  # the store's time when the last sweep began
        self.rounds = 0  # completed sweeps (for tests and metrics)
        # For metrics: when the coming round falls due and how late the last one began,
        # on this process's monotonic clock (a starved event loop shows up here).
        self._due_at: float | None = None
        self.last_lag = 0.0

    @property
    def retention(self) -> timedelta | None:
        return self._retention

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def lag(self) -> float:
        """Seconds the janitor is behind: how far past due its coming round is, or while
        that is not due yet, how late the last round began. Plain reads: safe from a
        metrics thread."""
        due = self._due_at
        late = 0.0 if due is None else time.monotonic() - due
        return late if late > 0 else self.last_lag

    def start(self) -> None:
        """Start the loop (idempotent). Needs a running event loop."""
        if self._task is not None:
            return
        self._feed.history.add_listener(self._on_change)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="runcontrol-janitor")

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._feed.history.remove_listener(self._on_change)
        await stop_task(task)

    async def sweep(self) -> timedelta | None:
        """One round; returns how long until the next due time (None: nothing pending).

        Public so tests (and a store without a loop) can drive it step by step.
        """
        store = self._store
        now = self._swept_at = await store.now()
        busy = len(await store.expire_due(now, self._batch)) >= self._batch
        busy = len(await store.expire_leases(now, self._batch)) >= self._batch or busy
        if self._retention is not None:
            purged = await store.purge_finished(now - self._retention, self._batch)
            busy = busy or len(purged) >= self._batch
        # Trim the store's change feed, and this process's cache of it to match.
        self._feed.history.compact_to(await store.compact_changes())
        self.rounds += 1
        if busy:
            return timedelta(0)  # a full batch: more may be due; come back after a yield
        due = _earliest(await store.next_deadline(), await store.next_lease_lapse())
        if self._retention is not None:
            oldest = await store.oldest_finished_at()
            if oldest is not None:
                purge_at = oldest + self._retention
                due = purge_at if due is None else min(due, purge_at)
        return None if due is None else max(due - now, timedelta(0))

    # -- internals -----------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._due_at is not None:  # the round the last sleep was for
                self.last_lag = max(time.monotonic() - self._due_at, 0.0)
                self._due_at = None
            self._target = self._noted = None
            try:
                delay = await self.sweep()
            except StoreUnavailable as error:
                # An outage, not a bug: no traceback, and the store says what is wrong.
                log.warning(
                    "janitor round failed (%s); retrying in %.1fs", error, self._error_backoff
                )
                await asyncio.sleep(self._error_backoff)
                continue
            except Exception:
                log.exception("janitor round failed; retrying in %.1fs", self._error_backoff)
                await asyncio.sleep(self._error_backoff)
                continue
            now = self._swept_at
            target = now + min(
                delay if delay is not None else self._prune_interval, self._prune_interval
            )
            if self._noted is not None and self._noted < target:
                target = self._noted
            self._target = target
            self._wake = wake = loop.create_future()
            # Waiting on a plain future creates no task, and a poke just resolves it.
            seconds = max((target - now).total_seconds(), 0.0)
            self._due_at = time.monotonic() + seconds
            await asyncio.wait({wake}, timeout=seconds + (_EARLY_WAKE_MARGIN if seconds else 0))

    def _on_change(self, change_set: ChangeSet) -> None:
        # Inside the writer's atomic step: quick, never raises.
        for change in change_set.changes:
            run = change.run
            if change.kind is ChangeKind.CREATED:
                due = run.deadline
            elif run.lease_ttl is not None and change.prev_status is not run.status:
                due = run.updated_at + run.lease_ttl  # a claim that took a lease
            elif (
                self._retention is not None
                and change.kind is ChangeKind.UPDATED
                and change.prev_status is not None
                and change.prev_status.is_active
                and run.status.is_terminal
            ):
                due = run.updated_at + self._retention
            else:
                continue
            if due is None:
                continue
            if self._target is None:  # mid-round: remember it for the coming sleep
                if self._noted is None or due < self._noted:
                    self._noted = due
            elif due < self._target:
                self._target = due
                if self._wake is not None and not self._wake.done():
                    self._wake.set_result(None)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
