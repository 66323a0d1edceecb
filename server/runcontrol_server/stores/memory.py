"""The in-memory store: the embedded default, for one server process.

Atomicity comes from the event loop: every operation below runs from start to end
without an `await` in between, so no other task can observe or interleave with a
half-done change. That is the whole concurrency story; there is no lock to forget.

Indexes keep every per-thread question proportional to the thread, not the store:
`_threads[thread_id]` holds the thread's runs in creation order and its active runs.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta

from ..domain.clock import MonotonicClock
from ..domain.errors import (
    RequestIdReused,
    RevisionMismatch,
    RunActive,
    RunNotFound,
)
from ..domain.history import DEFAULT_MAX_AGE, DEFAULT_MAX_CHANGES, ChangeHistory
from ..domain.limits import DEFAULT_STORE_LIMITS, StoreLimits
from ..domain.model import (
    CancelAction,
    CancelOutcome,
    Change,
    ChangeKind,
    ChangeSet,
    CreateOutcome,
    DeleteOutcome,
    FeedBounds,
    Inflight,
    ListQuery,
    Run,
    RunDraft,
    RunPage,
    RunStatus,
    StatusChange,
    TransitionOutcome,
    cursor_of,
)
from ..domain.rules import (
    apply_cancel,
    apply_lease_lapse,
    apply_timeout,
    apply_transition,
    check_renewal,
    check_stored_runs,
    check_transition,
    interrupt_reason,
    new_run,
    plan_create,
)

DEFAULT_HISTORY_LIMIT = DEFAULT_MAX_CHANGES


def _resolve_if_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _CreationOrder:
    """Run ids in ascending create_revision, with O(log n) seeks and lazy deletion.

    Revisions are handed out in increasing order, so adding is an append; deleting
    only forgets the id and the list is compacted once it is mostly holes.
    """

    __slots__ = ("_live", "_revisions")

    def __init__(self) -> None:
        self._revisions: list[int] = []
        self._live: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, create_revision: int, run_id: str) -> None:
        self._revisions.append(create_revision)
        self._live[create_revision] = run_id

    def remove(self, create_revision: int) -> None:
        del self._live[create_revision]
        if len(self._revisions) > 2 * len(self._live) + 64:
            self._revisions = [r for r in self._revisions if r in self._live]

    def newest_first(self, before_revision: int | None = None) -> Iterator[str]:
        end = (
            len(self._revisions)
            if before_revision is None
            else bisect.bisect_left(self._revisions, before_revision)
        )
        for index in range(end - 1, -1, -1):
            run_id = self._live.get(self._revisions[index])
            if run_id is not None:
                yield run_id


class _Thread:
    """One thread's runs in creation order, and its active ones."""

    __slots__ = ("active", "runs")

    def __init__(self) -> None:
        self.runs = _CreationOrder()
        # Active run ids in creation order (dicts keep insertion order): the FIFO queue.
        self.active: dict[str, None] = {}


class InMemoryRunStore:
    """`RunStore` held in this process's memory. Lost on restart; not shared by replicas.

    `limits` bound the runs active per thread and the runs stored (see `StoreLimits`).
    """

    def __init__(
        self,
        *,
        clock: MonotonicClock | None = None,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        history_max_age: timedelta | None = DEFAULT_MAX_AGE,
        limits: StoreLimits = DEFAULT_STORE_LIMITS,
        local_feed: bool = True,
    ) -> None:
        """`local_feed=False` hides the history from this process's feed cache
        (`local_history`), which then reads the feed like a database's: for tests of
        that reader."""
        self._clock = clock or MonotonicClock()
        self._local_feed = local_feed
        self._limits = limits
        # This process's runs: gone with it, so each store is a new identity.
        self._identity = f"memory-{uuid.uuid4()}"
        # The change feed: the store's own ring of committed change sets (what a database
        # store keeps in its events table), bounded by count and age.
        self._feed = ChangeHistory(
            max_changes=history_limit, max_age=history_max_age, now=self._clock.now
        )
        self._runs: dict[str, Run] = {}
        self._order = _CreationOrder()
        self._threads: dict[str, _Thread] = {}
        self._requests: dict[str, tuple[str, CreateOutcome]] = {}
        self._revision = 0
        # Deadlines of active runs, earliest first; entries of runs that finished are
        # skipped lazily when they reach the top.
        self._deadlines: list[tuple[datetime, int, str]] = []
        # Held leases: run id -> when it lapses (renewals move it; no revision), and the
        # lapse times in a heap. A renewal does not push: an entry that comes due early is
        # pushed again at its run's current lapse time, so the heap holds one per lease.
        self._leases: dict[str, datetime] = {}
        self._lease_heap: list[tuple[datetime, str]] = []
        # Finished runs in the order they finished (the monotonic clock makes that
        # updated_at order), for retention.
        self._finished: deque[tuple[datetime, str]] = deque()

    async def now(self) -> datetime:
        return self._clock.now()

    # -- reads -------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run:
        return self._get(run_id)

    async def list_runs(self, query: ListQuery) -> RunPage:
        # Creation order is create_revision order: no clock is involved.
        before = None if query.after is None else query.after.create_revision
        if query.thread_id is not None:
            thread = self._threads.get(query.thread_id)
            candidates: Iterator[str] = (
                iter(()) if thread is None else thread.runs.newest_first(before)
            )
        else:
            candidates = self._order.newest_first(before)
        matching = (run for run in map(self._runs.__getitem__, candidates) if query.matches(run))
        page = tuple(itertools.islice(matching, query.limit + 1))
        more = len(page) > query.limit
        page = page[: query.limit]
        return RunPage(page, cursor_of(page[-1]) if more and page else None, self._revision)

    async def inflight(self, thread_id: str) -> Inflight:
        thread = self._threads.get(thread_id)
        run_ids = () if thread is None else tuple(thread.active)
        return Inflight(thread_id, run_ids, self._revision)

    async def revision(self) -> int:
        return self._revision

    # -- the change feed ---------------------------------------------------------------

    def local_history(self) -> ChangeHistory | None:
        return self._feed if self._local_feed else None

    async def read_changes(self, after: int, limit: int) -> Sequence[ChangeSet]:
        return self._feed.since(after + 1, limit)

    async def feed_bounds(self) -> FeedBounds:
        return FeedBounds(self._feed.compact_revision, self._revision)

    async def wait_for_changes(self, after: int, timeout: float) -> FeedBounds:  # noqa: ASYNC109
        if self._revision > after or timeout <= 0:
            return FeedBounds(self._feed.compact_revision, self._revision)
        # The ring resolves its waiters on the next append: one future, no task, no poll.
        # The feed reader waits here after nearly every write, so the timeout is a plain
        # timer resolving the same future (asyncio.wait would add a set, a callback per
        # future and a coroutine to each wait).
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._feed.add_waiter(waiter)
        timer = loop.call_later(timeout, _resolve_if_pending, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._feed.remove_waiter(waiter)
        return FeedBounds(self._feed.compact_revision, self._revision)

    async def compact_changes(self) -> int:
        self._feed.prune()
        return self._feed.compact_revision

    async def snapshot(
        self, thread_id: str | None, run_ids: frozenset[str]
    ) -> tuple[tuple[Run, ...], int]:
        # One synchronous step: the runs and the revision are consistent.
        candidates: Iterable[Run]
        if run_ids:
            candidates = (self._runs[r] for r in run_ids if r in self._runs)
        elif thread_id is not None:
            thread = self._threads.get(thread_id)
            candidates = (
                () if thread is None else map(self._runs.__getitem__, thread.runs.newest_first())
            )
        else:
            candidates = map(self._runs.__getitem__, self._order.newest_first())
        runs = tuple(run for run in candidates if thread_id is None or run.thread_id == thread_id)
        return tuple(sorted(runs, key=lambda run: run.create_revision)), self._revision

    async def next_deadline(self) -> datetime | None:
        while self._deadlines:
            deadline, _, run_id = self._deadlines[0]
            run = self._runs.get(run_id)
            if run is not None and run.is_active and run.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    async def expire_due(self, now: datetime, limit: int) -> list[Run]:
        expired: list[Run] = []
        while self._deadlines and len(expired) < limit and self._deadlines[0][0] <= now:
            _, _, run_id = heapq.heappop(self._deadlines)
            run = self._runs.get(run_id)
            if run is None or not run.is_active or run.deadline is None or run.deadline > now:
                continue
            revision = self._revision + 1
            timed_out = apply_timeout(run, self._clock.now(), revision)
            self._replace(timed_out)
            self._commit(revision, [Change(ChangeKind.UPDATED, timed_out, run.status)])
            expired.append(timed_out)
        return expired

    async def next_lease_lapse(self) -> datetime | None:
        heap = self._lease_heap
        while heap:
            lapse, run_id = heap[0]
            current = self._leases.get(run_id)
            if current == lapse:
                return lapse
            if current is None:
                heapq.heappop(heap)  # the lease ended (run finished, cancelled, deleted)
            else:
                heapq.heapreplace(heap, (current, run_id))  # renewed since it was pushed
        return None

    async def expire_leases(self, now: datetime, limit: int) -> list[Run]:
        lapsed: list[Run] = []
        heap = self._lease_heap
        while heap and len(lapsed) < limit and heap[0][0] <= now:
            _, run_id = heap[0]
            current = self._leases.get(run_id)
            if current is None:
                heapq.heappop(heap)
                continue
            if current > now:
                heapq.heapreplace(heap, (current, run_id))
                continue
            heapq.heappop(heap)
            run = self._runs[run_id]
            revision = self._revision + 1
            changed = apply_lease_lapse(run, self._clock.now(), revision)
            self._replace(changed)
            self._commit(revision, [Change(ChangeKind.UPDATED, changed, run.status)])
            lapsed.append(changed)
        return lapsed

    async def renew_lease(self, run_id: str, worker_id: str) -> tuple[Run, datetime]:
        run = self._get(run_id)
        check_renewal(run, worker_id)
        assert run.lease_ttl is not None  # check_renewal holds it
        lapse = self._leases[run_id] = self._clock.now() + run.lease_ttl
        return run, lapse

    async def oldest_finished_at(self) -> datetime | None:
        while self._finished:
            finished_at, run_id = self._finished[0]
            run = self._runs.get(run_id)
            if run is not None and run.updated_at == finished_at:
                return finished_at
            self._finished.popleft()
        return None

    async def purge_finished(self, finished_before: datetime, limit: int) -> list[Run]:
        purged: list[Run] = []
        while self._finished and len(purged) < limit and self._finished[0][0] <= finished_before:
            finished_at, run_id = self._finished.popleft()
            run = self._runs.get(run_id)
            if run is None or run.updated_at != finished_at or run.is_active:
                continue
            revision = self._revision + 1
            self._remove(run)
            self._commit(revision, [Change(ChangeKind.DELETED, run, run.status)])
            purged.append(run)
        return purged

    # -- writes ------------------------------------------------------------------------

    async def create_run(self, draft: RunDraft) -> CreateOutcome:
        fingerprint = draft.fingerprint() if draft.request_id is not None else ""
        if draft.request_id is not None and (seen := self._requests.get(draft.request_id)):
            seen_fingerprint, outcome = seen
            if seen_fingerprint != fingerprint:
                raise RequestIdReused(draft.request_id, outcome.run.run_id)
            return outcome._replace(replayed=True)
        if draft.run_id in self._runs:
            raise RuntimeError(f"run id collision: {draft.run_id}")

        plan = plan_create(draft, self._active_runs(draft.thread_id), self._limits)
        check_stored_runs(len(self._runs), self._limits)
        revision, now = self._revision + 1, self._clock.now()
        changes: list[Change] = []
        interrupted: list[Run] = []
        reason = interrupt_reason(draft.run_id, draft.multitask_strategy) if plan.interrupt else ""
        for old in plan.interrupt:
            run = apply_cancel(old, plan.cancel_action, reason, now, revision)
            self._replace(run)
            interrupted.append(run)
            changes.append(Change(ChangeKind.UPDATED, run, old.status))
        run = new_run(draft, now, revision)
        self._insert(run)
        changes.append(Change(ChangeKind.CREATED, run, None))
        self._commit(revision, changes)

        outcome = CreateOutcome(run, tuple(interrupted), plan.queued_behind)
        if draft.request_id is not None:
            self._requests[draft.request_id] = (fingerprint, outcome)
        return outcome

    async def set_status(self, change: StatusChange) -> TransitionOutcome:
        run = self._get(change.run_id)
        earlier = self._earlier_active(run) if change.status is RunStatus.RUNNING else []
        if not check_transition(run, change, earlier):
            return TransitionOutcome(run, changed=False)
        revision = self._revision + 1
        updated = apply_transition(run, change, self._clock.now(), revision)
        self._replace(updated)
        if updated.lease_ttl is not None and updated.status is RunStatus.RUNNING:
            lapse = self._leases[updated.run_id] = updated.updated_at + updated.lease_ttl
            heapq.heappush(self._lease_heap, (lapse, updated.run_id))
        self._commit(revision, [Change(ChangeKind.UPDATED, updated, run.status)])
        return TransitionOutcome(updated, changed=True)

    async def cancel_run(self, run_id: str, action: CancelAction, reason: str) -> CancelOutcome:
        run = self._get(run_id)
        if not run.is_active:
            return CancelOutcome(run, cancelled=False)
        revision = self._revision + 1
        cancelled = apply_cancel(run, action, reason, self._clock.now(), revision)
        self._replace(cancelled)
        self._commit(revision, [Change(ChangeKind.UPDATED, cancelled, run.status)])
        return CancelOutcome(cancelled, cancelled=True)

    async def delete_run(self, run_id: str, expected_mod_revision: int | None) -> DeleteOutcome:
        run = self._get(run_id)
        if expected_mod_revision is not None and expected_mod_revision != run.mod_revision:
            raise RevisionMismatch(run_id, expected_mod_revision, run.mod_revision)
        if run.is_active:
            raise RunActive(run_id, run.status)
        revision = self._revision + 1
        self._remove(run)
        self._commit(revision, [Change(ChangeKind.DELETED, run, run.status)])
        return DeleteOutcome(run, revision)

    async def open(self) -> None:
        return None

    async def identity(self) -> str:
        return self._identity

    async def close(self) -> None:
        return None

    # -- internals (all synchronous: each public method is one atomic step) -------------

    def _get(self, run_id: str) -> Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def _active_runs(self, thread_id: str) -> list[Run]:
        thread = self._threads.get(thread_id)
        return [] if thread is None else [self._runs[run_id] for run_id in thread.active]

    def _earlier_active(self, run: Run) -> list[str]:
        """Active runs of the thread created before `run` (the runs it is queued behind)."""
        thread = self._threads[run.thread_id]
        return [
            run_id
            for run_id in itertools.takewhile(lambda rid: rid != run.run_id, thread.active)
            if self._runs[run_id].create_revision < run.create_revision
        ]

    def _insert(self, run: Run) -> None:
        self._runs[run.run_id] = run
        self._order.add(run.create_revision, run.run_id)
        thread = self._threads.get(run.thread_id)
        if thread is None:  # not setdefault: that would build a _Thread on every insert
            thread = self._threads[run.thread_id] = _Thread()
        thread.runs.add(run.create_revision, run.run_id)
        if run.is_active:
            thread.active[run.run_id] = None
        if run.deadline is not None:
            heapq.heappush(self._deadlines, (run.deadline, run.create_revision, run.run_id))

    def _replace(self, run: Run) -> None:
        self._runs[run.run_id] = run
        if run.lease_ttl is None:
            self._leases.pop(run.run_id, None)  # the claim ended: so did its lease
        if not run.is_active:
            self._threads[run.thread_id].active.pop(run.run_id, None)
            # It just finished (or a finished run got its worker's note): its retention
            # period starts at this update; an older entry is skipped as stale.
            self._finished.append((run.updated_at, run.run_id))

    def _remove(self, run: Run) -> None:
        del self._runs[run.run_id]
        self._leases.pop(run.run_id, None)
        self._order.remove(run.create_revision)
        thread = self._threads[run.thread_id]
        thread.runs.remove(run.create_revision)
        thread.active.pop(run.run_id, None)
        if not thread.runs:
            del self._threads[run.thread_id]
        if run.request_id is not None:
            # The idempotency key lives exactly as long as the run it created.
            seen = self._requests.get(run.request_id)
            if seen is not None and seen[1].run.run_id == run.run_id:
                del self._requests[run.request_id]

    def _commit(self, revision: int, changes: list[Change]) -> None:
        self._revision = revision
        self._feed.append(ChangeSet(revision, tuple(changes)))

    # -- introspection for tests and metrics -------------------------------------------

    def sizes(self) -> dict[str, int]:
        """Sizes of every internal structure (used to prove memory stays bounded)."""
        return {
            "runs": len(self._runs),
            "threads": len(self._threads),
            "requests": len(self._requests),
            "history": len(self._feed),
            "deadlines": len(self._deadlines),
            "leases": len(self._leases),
            "lease_heap": len(self._lease_heap),
            "finished": len(self._finished),
        }
