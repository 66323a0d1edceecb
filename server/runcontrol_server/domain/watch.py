"""Watching runs: filters, the classification of changes, and cursors into the history.

Shape (after etcd's watchable store and the Kubernetes watch cache): writers append one
`ChangeSet` per revision to the shared `ChangeHistory`, which resolves the wake-up
future of every reader waiting on it. Each `Watcher` is only a cursor into that history
plus a filter: it has no task and no queue of its own, so the history *is* every
watcher's buffer. A watcher that never reads costs the writers nothing and holds nothing
but its cursor; if it falls so far behind that its cursor leaves the history, it ends
with `RevisionCompacted` (the client re-lists and watches again).

Per change, a caught-up watcher costs one future of its own (registered with the
history, resolved by the append) and a shared, cached batch: no set, callback or timer
per wait. A watcher filtered by thread registers its future under that thread, so a
change wakes only the watchers of its thread (and those without a thread filter):
watchers of other threads cost it nothing, and skip, when they next wake, the revisions
that did not touch their thread, as they would have found nothing in them.

Its progress deadline is one lazily re-armed timer per watcher: it fires at most once
per `progress_interval` and, when something was delivered meanwhile, only re-arms
itself, so steady traffic costs it nothing per change.

Nothing here imports grpc or protobuf; the servicer turns batches into messages.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .errors import InvalidArgument, LimitExceeded, RevisionCompacted, ShuttingDown
from .history import ChangeHistory
from .model import Change, ChangeKind, ChangeSet, Run, RunStatus

DEFAULT_MAX_WATCHERS = 10_000
DEFAULT_PROGRESS_INTERVAL = 5.0
# The periods a request (and the server's default) may choose: shorter would have a
# stream send progress in a busy loop, longer hides a dead one for too long.
MIN_PROGRESS_INTERVAL = 0.1
MAX_PROGRESS_INTERVAL = 3600.0
# Change sets read from the history per call: amortizes the lookup for a watcher that
# is behind, while bounding what one watcher holds (references to shared change sets).
READ_CHUNK = 256
# (revision, filter) classifications kept for watchers that share a filter.
CLASSIFY_CACHE_SIZE = 4096


class EventType(enum.StrEnum):
    """A change as one watcher sees it, relative to its filter."""

    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """Which runs a watcher sees. Empty / None parts match everything."""

    thread_id: str | None = None
    run_ids: frozenset[str] = field(default_factory=frozenset)
    statuses: frozenset[RunStatus] = field(default_factory=frozenset)

    def matches(self, run: Run) -> bool:
        return self.matches_as(run, run.status)

    def matches_as(self, run: Run, status: RunStatus) -> bool:
        """Whether `run` would match if it were in `status` (ids never change)."""
        return (
            (self.thread_id is None or run.thread_id == self.thread_id)
            and (not self.run_ids or run.run_id in self.run_ids)
            and (not self.statuses or status in self.statuses)
        )


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change as seen through a filter. `index` is its position in the change set,
    so (revision, index, type) identifies the encoded event across watchers."""

    type: EventType
    change: Change
    revision: int
    index: int = 0


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What a watcher delivers at once: every matching event of one revision, or a
    progress (bookmark) message, or the end-of-initial-set marker."""

    revision: int
    events: tuple[WatchEvent, ...] = ()
    end_of_initial_set: bool = False
    progress_only: bool = False


def classify(
    change: Change, watch_filter: WatchFilter, revision: int = 0, index: int = 0
) -> WatchEvent | None:
    """How `change` looks to a watcher with `watch_filter`, or None if it does not see it.

    A run that moves into the filter is ADDED, out of it DELETED (its last state), within
    it MODIFIED. "Before" is the same run in `prev_status`.
    """
    run = change.run
    after = watch_filter.matches(run)
    if change.kind is ChangeKind.CREATED:
        kind = EventType.ADDED if after else None
    else:
        before_status = change.prev_status if change.prev_status is not None else run.status
        before = watch_filter.matches_as(run, before_status)
        if change.kind is ChangeKind.DELETED:
            kind = EventType.DELETED if before else None
        elif before:
            kind = EventType.MODIFIED if after else EventType.DELETED
        else:
            kind = EventType.ADDED if after else None
    return None if kind is None else WatchEvent(kind, change, revision, index)


def classify_set(change_set: ChangeSet, watch_filter: WatchFilter) -> tuple[WatchEvent, ...]:
    """Every event of one revision a watcher sees, in change order."""
    events = (
        classify(change, watch_filter, change_set.revision, index)
        for index, change in enumerate(change_set.changes)
    )
    return tuple(event for event in events if event is not None)


class WatchHub:
    """The registry of open watchers: enforces the limit and ends them all on shutdown."""

    def __init__(
        self,
        history: ChangeHistory,
        *,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    ) -> None:
        if max_watchers < 1:
            raise ValueError("max_watchers must be at least 1")
        if not progress_interval > 0:
            raise ValueError("progress_interval must be positive")
        self._history = history
        self.max_watchers = max_watchers
        self.progress_interval = progress_interval
        self._watchers: set[Watcher] = set()
        self._shutting_down = False
        # Each distinct filter of the open watchers -> [its number, watchers with it].
        # The number (never reused) stands for the filter in the classification cache,
        # so the lookup each watcher makes per change hashes and compares ints, not
        # filters (whose hash and equality are Python code).
        self._filter_numbers: dict[WatchFilter, list[int]] = {}
        self._next_number = itertools.count(1)
        # Watchers that share a filter share its classification of each revision, as
        # the batch they deliver (None: nothing matches): (revision, filter number) ->
        # batch, bounded, oldest out first.
        self._classified: dict[tuple[int, int], WatchBatch | None] = {}
        # Set while no watcher is open (asyncio.Event binds to a loop only when awaited).
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def history(self) -> ChangeHistory:
        return self._history

    @property
    def count(self) -> int:
        """Open watchers (registered and not yet closed)."""
        return len(self._watchers)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def watchers(self) -> frozenset[Watcher]:
        """The open watchers, as a snapshot (for introspection and tests)."""
        return frozenset(self._watchers)

    def watch(
        self, watch_filter: WatchFilter, *, progress_interval: float | None = None
    ) -> Watcher:
        """A new watcher, registered at once, positioned "from now" (see `Watcher.seek`).

        Use it as a context manager (`with hub.watch(f) as w: async for batch in w`): the
        exit unregisters it, also on cancellation, so nothing outlives the stream.
        Raises: LimitExceeded (max_watchers), ShuttingDown.
        """
        if self._shutting_down:
            raise ShuttingDown(self._history.head_revision)
        if len(self._watchers) >= self.max_watchers:
            raise LimitExceeded(
                "max_watchers", f"at most {self.max_watchers} watch streams may be open at once"
            )
        watcher = Watcher(
            self,
            watch_filter,
            progress_interval=progress_interval or self.progress_interval,
        )
        self._watchers.add(watcher)
        self._idle.clear()
        return watcher

    def shutdown(self) -> None:
        """End every open watcher promptly with `ShuttingDown(its own last revision)`.

        Synchronous and idempotent; later `watch` calls raise ShuttingDown. Each watcher
        reports the last revision it fully delivered (not the store's), so resuming from
        `revision + 1` loses nothing even for a watcher that was behind.
        """
        self._shutting_down = True
        # Waiting watchers wait on their own future registered with the history only,
        # so the shutdown is delivered through the history's wake-up.
        self._history.wake()

    async def wait_closed(self) -> None:
        """Return once no watcher is open (bound it with `asyncio.timeout`)."""
        await self._idle.wait()

    def classified(
        self, change_set: ChangeSet, watch_filter: WatchFilter, filter_number: int
    ) -> WatchBatch | None:
        """The batch a watcher with `watch_filter` delivers for `change_set` (None when
        nothing matches), computed once per (revision, filter) for all watchers: they
        share the (immutable) batch, so the servicer also encodes it once.
        `filter_number` is the hub's number for `watch_filter` (`filter_number()`)."""
        key = (change_set.revision, filter_number)
        cache = self._classified
        try:
            return cache[key]
        except KeyError:
            pass
        events = classify_set(change_set, watch_filter)
        batch = WatchBatch(change_set.revision, events) if events else None
        if len(cache) >= CLASSIFY_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = batch
        return batch

    def filter_number(self, watch_filter: WatchFilter) -> int:
        """The number standing for `watch_filter` while a watcher uses it: the same for
        equal filters, never reused for another. Each call must be matched by one
        `release_filter`."""
        entry = self._filter_numbers.get(watch_filter)
        if entry is None:
            entry = self._filter_numbers[watch_filter] = [next(self._next_number), 0]
        entry[1] += 1
        return entry[0]

    def release_filter(self, watch_filter: WatchFilter) -> None:
        entry = self._filter_numbers[watch_filter]
        entry[1] -= 1
        if not entry[1]:
            del self._filter_numbers[watch_filter]

    @property
    def filter_count(self) -> int:
        """Distinct filters of the open watchers (for introspection and tests)."""
        return len(self._filter_numbers)

    def _discard(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        if not self._watchers:
            self._idle.set()


class Watcher:
    """A cursor into the history, filtered, delivering one `WatchBatch` per revision that
    has matching events (revisions without any deliver nothing), and a progress batch
    when nothing was delivered for `progress_interval` seconds.

    Ends with RevisionCompacted when its cursor leaves the history, with ShuttingDown
    when the hub shuts down. Not safe for two concurrent readers (one stream, one reader).

    Waiting, it awaits a future of its own registered with the history (resolved by the
    next append or wake-up, or by its progress timer; unregistered when the wait ends in
    any way, cancellation included). The progress timer is armed at most once at a time,
    at the progress deadline, and re-armed from there when something was delivered
    meanwhile; `close` cancels it.
    """

    __slots__ = (
        "_chunk",
        "_chunk_pos",
        "_closed",
        "_cursor",
        "_filter",
        "_filter_number",
        "_hub",
        "_last_sent",
        "_loop",
        "_thread",
        "_time",
        "_timer",
        "_waiter",
        "progress_interval",
    )

    def __init__(
        self,
        hub: WatchHub,
        watch_filter: WatchFilter,
        *,
        progress_interval: float,
        time: Callable[[], float] | None = None,
    ) -> None:
        self._hub = hub
        self._filter = watch_filter
        # What it waits under in the history: its thread (it sees nothing of others).
        self._thread = watch_filter.thread_id
        self.progress_interval = progress_interval
        self._time = time or asyncio.get_running_loop().time
        # The loop it waits on, taken at its first wait: `asyncio.get_running_loop()`
        # checks the process id (a system call) on every call, once per change per
        # watcher otherwise.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cursor = hub.history.head_revision + 1  # the next revision to look at
        self._chunk: Sequence[ChangeSet] = ()
        self._chunk_pos = 0
        self._last_sent = self._time()
        self._closed = False
        # The future the reader awaits while caught up (None when it is not waiting); its
        # result is the revision it may skip to (see `ChangeHistory.add_waiter`) or None.
        self._waiter: asyncio.Future[int | None] | None = None
        # The progress timer: armed while waiting, at most one (None when not armed).
        self._timer: asyncio.TimerHandle | None = None
        # Last: released by `close` (through the hub), so taken once nothing can fail.
        self._filter_number = hub.filter_number(watch_filter)

    @property
    def filter(self) -> WatchFilter:
        return self._filter

    @property
    def cursor(self) -> int:
        """The next revision this watcher will look at."""
        return self._cursor

    @property
    def revision(self) -> int:
        """The last revision fully processed (everything up to it was delivered)."""
        return self._cursor - 1

    @property
    def held(self) -> int:
        """Change sets this watcher holds (its current chunk): its whole buffer, at most
        `READ_CHUNK` and never more than the history keeps, shared with everyone."""
        return len(self._chunk)

    @property
    def timer_armed(self) -> bool:
        """Whether its progress timer is pending (for introspection and tests)."""
        return self._timer is not None

    def seek(self, revision: int) -> None:
        """Start at `revision` (>= 1) instead of "from now".

        Raises: RevisionCompacted (no longer kept), InvalidArgument (`start_revision`
        after the next revision: this server has never reached it, e.g. it restarted).
        """
        history = self._hub.history
        if revision < 1:
            raise InvalidArgument("start_revision", "must be at least 1")
        if revision <= history.compact_revision:
            raise RevisionCompacted(revision, history.compact_revision)
        if revision > history.head_revision + 1:
            raise InvalidArgument(
                "start_revision",
                f"is after the next revision {history.head_revision + 1} of this server",
            )
        self._cursor = revision
        self._chunk, self._chunk_pos = (), 0

    def mark_sent(self) -> None:
        """Tell the watcher something was just sent (e.g. the initial set): restarts the
        progress period."""
        self._last_sent = self._time()

    def close(self) -> None:
        """Unregister, cancel the progress timer, wake a waiting reader (it then ends
        with StopAsyncIteration) and drop held references. Idempotent."""
        if not self._closed:
            self._closed = True
            self._chunk = ()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            waiter = self._waiter
            if waiter is not None:
                self._hub.history.remove_waiter(waiter, self._thread)
                if not waiter.done():
                    waiter.set_result(None)
            self._hub.release_filter(self._filter)
            self._hub._discard(self)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchBatch:
        # Run for every watcher at every change: the hub's fields are read directly.
        hub = self._hub
        history = hub._history
        # Each pass either returns, raises, consumes at least one change set, or waits
        # (woken by an append, the hub's shutdown, close, or the progress deadline), so
        # the loop always makes progress.
        while True:
            if self._closed:
                raise StopAsyncIteration
            if hub._shutting_down:
                raise ShuttingDown(self.revision)
            if self._chunk:
                batch = self._next_from_chunk()
                if batch is not None:
                    self._last_sent = self._time()
                    return batch
            now = self._time()
            due = self._last_sent + self.progress_interval - now
            if due <= 0:
                self._last_sent = now
                return WatchBatch(self.revision, progress_only=True)
            if self._cursor <= history.head_revision:
                # Raises RevisionCompacted when the cursor has fallen off the history.
                self._chunk, self._chunk_pos = history.since(self._cursor, READ_CHUNK), 0
                continue
            # Caught up: wait on a future of our own, resolved by the next append or the
            # hub's shutdown (through the history), by close, or by the progress timer.
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            if self._timer is None:
                self._timer = loop.call_later(due, self._progress_due)
            waiter = self._waiter = loop.create_future()
            history.add_waiter(waiter, self._thread)
            try:
                skip_to = await waiter
            finally:
                # Woken by the history: already unregistered. Otherwise (the timer, close,
                # cancellation of the stream) unregister here, so nothing is left behind.
                self._waiter = None
                history.remove_waiter(waiter, self._thread)
            if skip_to is not None and skip_to > self._cursor:
                # Nothing from the cursor up to there touched this watcher's thread: the
                # revisions it would have classified as "nothing to deliver", unread.
                self._cursor = skip_to

    def _progress_due(self) -> None:
        """The progress timer fired: re-arm it at the new deadline if something was
        delivered since it was armed, else wake the waiting reader for a progress batch
        (a reader that is not waiting sees the deadline passed on its next read)."""
        self._timer = None
        if self._closed:
            return
        due = self._last_sent + self.progress_interval - self._time()
        if due > 0:
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_later(due, self._progress_due)
        elif self._waiter is not None and not self._waiter.done():
            # Unregistered here, in the same step: an append after this must not count
            # as seen. Still registered under its thread means nothing since touched it.
            history = self._hub.history
            skip = history.remove_waiter(self._waiter, self._thread)
            self._waiter.set_result(history.head_revision + 1 if skip else None)

    def _next_from_chunk(self) -> WatchBatch | None:
        """The next revision in the held chunk with matching events (cursor moves past
        every revision looked at), or None when the chunk is used up."""
        chunk = self._chunk
        while self._chunk_pos < len(chunk):
            change_set = chunk[self._chunk_pos]
            self._chunk_pos += 1
            if change_set.revision < self._cursor:
                continue  # defensive: never deliver a revision twice
            self._cursor = change_set.revision + 1
            batch = self._hub.classified(change_set, self._filter, self._filter_number)
            if batch is not None:
                return batch
        self._chunk, self._chunk_pos = (), 0
        return None
