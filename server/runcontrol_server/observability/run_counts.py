"""Runs in the store by status, kept current from this process's change feed.

Why from the feed: counting in the store at every scrape would cost a full scan per
scrape per replica, while the feed already brings every replica's changes to every
process, so keeping the counts costs one dict update per change.

The starting point is one snapshot of the store (at start, and again after the feed
cache restarted past a gap, when changes were missed): its runs are counted at the
snapshot's revision, and of the change sets that arrive meanwhile only those after
that revision are applied on top. The snapshot reads every stored run once: on
PostgreSQL that is one full read at start, bounded by retention.
"""

from __future__ import annotations

import asyncio
import logging

from ..domain.manager import RunManager
from ..domain.model import ChangeKind, ChangeSet, RunStatus

log = logging.getLogger(__name__)

# How long `start` waits for the first count before serving without it (the gauge is
# absent until it arrives); a failed count is retried with a growing pause.
START_WAIT = 5.0
RETRY_DELAY = 0.5
RETRY_DELAY_MAX = 30.0


class RunCounts:
    def __init__(self, manager: RunManager) -> None:
        self._manager = manager
        # Fixed keys: the scrape thread copies it while the loop updates values.
        self._counts: dict[RunStatus, int] = dict.fromkeys(RunStatus, 0)
        self._ready = False
        # Change sets that arrived while a snapshot was being read (None: none read).
        self._pending: list[ChangeSet] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def counts(self) -> dict[RunStatus, int] | None:
        """Runs by status (every status present), or None while none is known."""
        return dict(self._counts) if self._ready else None

    async def start(self) -> None:
        """Follow the feed and count the store; returns once counted (or START_WAIT)."""
        self._manager.feed.history.add_listener(self._on_change)
        self._manager.feed.on_resync(self._recount)
        self._recount()
        assert self._task is not None
        await asyncio.wait((self._task,), timeout=START_WAIT)

    async def stop(self) -> None:
        """Stop following the feed (idempotent; a no-op before `start`)."""
        if self._closed:
            return
        self._closed = True  # on_resync callbacks cannot be removed: they check this
        if self._task is not None:  # started
            self._manager.feed.history.remove_listener(self._on_change)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _on_change(self, change_set: ChangeSet) -> None:
        # Inside the writer's atomic step: quick, never raises.
        if self._pending is not None:
            self._pending.append(change_set)
            return
        counts = self._counts
        for change in change_set.changes:
            status = change.run.status  # a deletion carries the run's last record
            if change.kind is ChangeKind.CREATED:
                counts[status] += 1
            elif change.kind is ChangeKind.DELETED:
                counts[status] -= 1
            elif change.prev_status is not None and change.prev_status is not status:
                counts[change.prev_status] -= 1
                counts[status] += 1

    def _recount(self) -> None:
        """Start (again) from a fresh snapshot; changes are held until it is read."""
        if self._closed:
            return
        if self._task is not None:
            self._task.cancel()
        self._ready = False
        self._pending = []
        self._task = asyncio.get_running_loop().create_task(
            self._count(), name="runcontrol-run-counts"
        )

    async def _count(self) -> None:
        delay = RETRY_DELAY
        while True:
            try:
                runs, revision = await self._manager.snapshot(None, frozenset())
                break
            except Exception as error:
                log.warning(
                    "counting runs for metrics failed (%s); retrying in %.1fs", error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX)
        counts = dict.fromkeys(RunStatus, 0)
        for run in runs:
            counts[run.status] += 1
        pending, self._pending = self._pending or [], None
        self._counts = counts
        for change_set in pending:
            if change_set.revision > revision:
                self._on_change(change_set)
        self._ready = True
