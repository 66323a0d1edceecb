"""The change history: a bounded, in-order log of change sets with one wake-up per write.

Writers append and never wait. Readers (watchers) each keep their own cursor and ask for
what follows it. A caught-up reader registers a future of its own (`add_waiter`, O(1) to
add and to remove, e.g. when its stream is cancelled) and awaits it; each append (and
`wake()`) resolves every registered future once and empties the registry, so a reader
costs a write nothing unless it is waiting, and a write resolves exactly the readers
that wait. A reader that never reads costs the writers nothing. A reader that sees one
thread only (a watcher filtered by thread) may register under that thread: an append
then wakes it only when one of its changes is in that thread, so ten thousand watchers
of other threads cost a write nothing; it is resolved with the revision that woke it,
and may skip the revisions before (none of them touched its thread). History is bounded by
count and by age; a cursor that falls off its start gets `RevisionCompacted`. In-process
bookkeeping that must see every change at once (WaitRun's waiters, the janitor) uses
listeners instead (`add_listener`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from .errors import RevisionCompacted
from .model import ChangeSet

DEFAULT_MAX_CHANGES = 10_000
DEFAULT_MAX_AGE = timedelta(minutes=10)


class ChangeHistory:
    def __init__(
        self,
        *,
        max_changes: int = DEFAULT_MAX_CHANGES,
        max_age: timedelta | None = DEFAULT_MAX_AGE,
        now: Callable[[], datetime],
    ) -> None:
        if max_changes < 1:
            raise ValueError("max_changes must be at least 1")
        self._max_changes = max_changes
        self._max_age = max_age
        self._now = now
        self._entries: deque[tuple[datetime, ChangeSet]] = deque()
        self._compact_revision = 0  # every revision <= this one has left the history
        self._head = 0
        # Readers' own futures, resolved and forgotten at the next append or wake-up
        # (a dict: O(1) removal, and readers are woken in the order they started waiting).
        self._waiters: dict[asyncio.Future[Any], None] = {}
        # Readers of one thread, by thread id (see `add_waiter`): an append resolves only
        # the groups of the threads it touches, each waiter with the append's revision.
        self._thread_waiters: dict[str, dict[asyncio.Future[Any], None]] = {}
        self._listeners: list[Callable[[ChangeSet], None]] = []

    @property
    def head_revision(self) -> int:
        """The newest revision appended (0 before the first)."""
        return self._head

    @property
    def compact_revision(self) -> int:
        """The newest revision no longer kept; readers may start at `compact_revision + 1`."""
        return self._compact_revision

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, change_set: ChangeSet) -> None:
        """Record the next revision and wake every waiting reader it concerns (once,
        together): every reader, but those of one thread only for their thread."""
        if change_set.revision != self._head + 1:
            raise ValueError(
                f"history expects revision {self._head + 1}, got {change_set.revision}"
            )
        now = self._now()
        self._entries.append((now, change_set))
        self._head = change_set.revision
        while len(self._entries) > self._max_changes:
            self._drop_oldest()
        self.prune(now)
        for listener in self._listeners:
            listener(change_set)
        waiters = self._waiters
        if waiters:
            self._waiters = {}
            _resolve(waiters, None)
        if self._thread_waiters:
            self._wake_threads(change_set)

    def _wake_threads(self, change_set: ChangeSet) -> None:
        """Resolve the readers of the threads `change_set` touches with its revision."""
        groups = self._thread_waiters
        for change in change_set.changes:  # a group is popped: a thread is woken once
            group = groups.pop(change.run.thread_id, None)
            if group:
                _resolve(group, change_set.revision)

    def add_listener(self, listener: Callable[[ChangeSet], None]) -> None:
        """Call `listener` synchronously with every appended change set.

        For in-process bookkeeping that must see every change at once (waking the
        waiters of a run that finished, rescheduling the janitor). It runs inside the
        writer's atomic step: it must be quick and must not raise.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ChangeSet], None]) -> None:
        self._listeners.remove(listener)

    def reset(self, revision: int) -> None:
        """Start empty at `revision` (a cache that starts, or restarts, in the middle of
        a store's feed)."""
        self._entries.clear()
        self._head = self._compact_revision = revision
        # The revisions are no longer contiguous with what readers of one thread saw:
        # none of them may skip anything now. They wait on as every other reader does
        # (woken by any append or `wake()`, with nothing to skip).
        for group in self._thread_waiters.values():
            self._waiters.update(group)
        self._thread_waiters.clear()

    def prune(self, now: datetime | None = None) -> None:
        """Drop change sets older than the age bound."""
        if self._max_age is None:
            return
        cutoff = (now or self._now()) - self._max_age
        while self._entries and self._entries[0][0] < cutoff:
            self._drop_oldest()

    def compact_to(self, revision: int) -> None:
        """Drop the change sets up to `revision` (never past the head): the store
        compacted them, so this copy must not serve them either."""
        while self._entries and self._entries[0][1].revision <= revision:
            self._drop_oldest()

    def since(self, revision: int, limit: int | None = None) -> Sequence[ChangeSet]:
        """Kept change sets from `revision` on (at most `limit`), in revision order.

        Raises RevisionCompacted when `revision` is no longer kept.
        """
        if revision <= self._compact_revision:
            raise RevisionCompacted(revision, self._compact_revision)
        if revision == self._head and (limit is None or limit > 0):
            # The caught-up reader's read, once per append for each of them: the newest
            # change set (kept, since `revision` is past the compacted ones).
            return (self._entries[-1][1],)
        # Revisions are contiguous, one change set each, so the offset is arithmetic.
        start = revision - self._compact_revision - 1
        size = len(self._entries)
        stop = size if limit is None else min(size, start + limit)
        if start >= stop:
            return []
        if start < size - stop:
            return [entry[1] for entry in itertools.islice(self._entries, start, stop)]
        # Caught-up readers ask for the newest entries: walk from the right end, so a
        # read costs what it returns, not the length of the whole history.
        tail = itertools.islice(reversed(self._entries), size - stop, size - start)
        return [entry[1] for entry in reversed(list(tail))]

    def wake(self) -> None:
        """Resolve every registered waiter without an append, so every waiting reader
        looks again (e.g. to notice a shutdown). Readers of one thread are resolved with
        the next revision: nothing up to the head touched their thread, or an append
        would have woken them already."""
        waiters = self._waiters
        if waiters:
            self._waiters = {}
            _resolve(waiters, None)
        groups = self._thread_waiters
        if groups:
            self._thread_waiters = {}
            for group in groups.values():
                _resolve(group, self._head + 1)

    def add_waiter(self, waiter: asyncio.Future[Any], thread_id: str | None = None) -> None:
        """Register `waiter` (a reader's own future) to be resolved at the next append or
        `wake()`, which also unregisters it.

        With `thread_id` (a reader that sees the changes of that thread only), an append
        resolves it only when one of its changes is in that thread, with the append's
        revision; `wake()` with the next revision. Either way its reader may skip the
        revisions before that one: none of them touched its thread. Otherwise it is
        resolved with None.

        The reader must `remove_waiter` it when it stops waiting for another reason
        (cancelled, timed out, closed): registrations are not otherwise dropped.
        """
        if thread_id is None:
            self._waiters[waiter] = None
            return
        group = self._thread_waiters.get(thread_id)
        if group is None:
            group = self._thread_waiters[thread_id] = {}
        group[waiter] = None

    def remove_waiter(self, waiter: asyncio.Future[Any], thread_id: str | None = None) -> bool:
        """Unregister `waiter` (registered with `thread_id`); a no-op when it is not
        registered (e.g. already woken). True when it was still registered under its
        thread: then no revision appended since its registration touched that thread."""
        if thread_id is not None:
            group = self._thread_waiters.get(thread_id)
            if group is not None and waiter in group:
                del group[waiter]
                if not group:
                    del self._thread_waiters[thread_id]
                return True
        self._waiters.pop(waiter, None)
        return False

    @property
    def waiter_count(self) -> int:
        """Registered waiters (for introspection and tests)."""
        return len(self._waiters) + sum(map(len, self._thread_waiters.values()))

    def _drop_oldest(self) -> None:
        _, dropped = self._entries.popleft()
        self._compact_revision = dropped.revision


def _resolve(waiters: dict[asyncio.Future[Any], None], result: int | None) -> None:
    for waiter in waiters:
        # A waiter may be done already: cancelled with its reader, or resolved by the
        # reader's own timer or close; either way its reader no longer waits here.
        if not waiter.done():
            waiter.set_result(result)
