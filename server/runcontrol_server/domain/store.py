"""The store protocol: whole atomic operations, not get/put.

Each method is one atomic step over the whole registry, so a store holds the
invariants its own way (the in-memory store within one event-loop step, PostgreSQL
within one transaction) while the rules themselves come from `rules`. Every change
takes the next value of ONE store-wide revision counter; all runs changed by one
operation share that revision and are published as one `ChangeSet`.

Errors each method may raise are listed on it; beyond them, any method of a store
behind a network may raise `StoreUnavailable` (answered UNAVAILABLE, retryable).
Anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from .history import ChangeHistory
from .model import (
    CancelAction,
    CancelOutcome,
    ChangeSet,
    CreateOutcome,
    DeleteOutcome,
    FeedBounds,
    Inflight,
    ListQuery,
    Run,
    RunDraft,
    RunPage,
    StatusChange,
    TransitionOutcome,
)


class RunStore(Protocol):
    async def open(self) -> None:
        """Connect and prepare (e.g. migrate a schema); idempotent. `RunManager.start`
        calls it first. Raises StoreUnavailable."""
        ...

    async def create_run(self, draft: RunDraft) -> CreateOutcome:
        """Apply the draft's multitask strategy to the thread and insert a PENDING run.

        With a request_id already seen: the same request (`RunDraft.fingerprint`) gets
        the first answer again with `replayed=True`; another request raises.
        Raises: ThreadBusy, RequestIdReused.
        """
        ...

    async def identity(self) -> str:
        """The identity of the stored data: the same for as long as the data lives (a
        durable store across restarts, every replica of one database), new whenever it
        starts empty (every in-memory store). A client that reconnects and sees another
        identity knows the revisions it holds mean nothing there."""
        ...

    async def get_run(self, run_id: str) -> Run:
        """Raises: RunNotFound."""
        ...

    async def set_status(self, change: StatusChange) -> TransitionOutcome:
        """A claim with `change.lease_ttl` also starts the claimer's lease: it lapses at
        the store's now + TTL unless renewed.
        Raises: RunNotFound, InvalidTransition, AlreadyClaimed, RevisionMismatch."""
        ...

    async def renew_lease(self, run_id: str, worker_id: str) -> tuple[Run, datetime]:
        """Move the lapse of the claimer's lease to the store's now + its TTL. Uses no
        revision and publishes no change: a heartbeat, not a state change. Returns the
        run and the new lapse time. Raises: RunNotFound, LeaseNotHeld."""
        ...

    async def cancel_run(self, run_id: str, action: CancelAction, reason: str) -> CancelOutcome:
        """Interrupt an active run; a finished run is returned unchanged. Raises: RunNotFound."""
        ...

    async def delete_run(self, run_id: str, expected_mod_revision: int | None) -> DeleteOutcome:
        """Remove a finished run. Raises: RunNotFound, RunActive, RevisionMismatch."""
        ...

    async def list_runs(self, query: ListQuery) -> RunPage:
        """One page, newest first in creation order (create_revision: commit order, never
        two clocks); keyset on `query.after.create_revision`."""
        ...

    async def inflight(self, thread_id: str) -> Inflight:
        """The thread's active runs, oldest first."""
        ...

    async def revision(self) -> int:
        """The store's current revision (0 before the first change)."""
        ...

    # -- the change feed: every committed change set, in revision order ----------------
    # One reader per process follows it into the process's watch cache (`feed.FeedCache`);
    # watchers, waiters and the janitor read that cache, never the store's feed directly.

    def local_history(self) -> ChangeHistory | None:
        """The store's own change history when the store lives in this process (the
        in-memory store), else None (a database shared by replicas).

        The process's watch cache then IS that history: no reader task wakes after
        every write to copy what is already here, and a change is in the cache when
        the write that made it returns.
        """
        ...

    async def read_changes(self, after: int, limit: int) -> Sequence[ChangeSet]:
        """Up to `limit` committed change sets with a revision > `after`, in order, with no
        gaps: revisions are allocated in commit order, so a reader never sees N+1 before N.

        Raises: RevisionCompacted when revision `after + 1` is no longer kept.
        """
        ...

    async def feed_bounds(self) -> FeedBounds:
        """The oldest revision no longer kept and the newest committed one."""
        ...

    async def wait_for_changes(self, after: int, timeout: float) -> FeedBounds:  # noqa: ASYNC109
        """Return the feed's bounds as soon as its head is beyond `after`, or after
        `timeout` seconds (the head then possibly still `after`). A wake-up, not a read:
        no change set moves."""
        ...

    async def compact_changes(self) -> int:
        """Drop change sets beyond the store's count and age bounds; returns the
        compacted revision. Idempotent, safe to run on every replica at once."""
        ...

    # -- time, snapshots, deadlines and retention --------------------------------------

    async def now(self) -> datetime:
        """The store's clock (UTC, never going backwards): timestamps, deadlines and
        retention all read it, so replicas never compare their own clocks."""
        ...

    async def snapshot(
        self, thread_id: str | None, run_ids: frozenset[str]
    ) -> tuple[tuple[Run, ...], int]:
        """Every run of `thread_id` (None: all) limited to `run_ids` (empty: no limit),
        oldest first, and the revision they are all consistent with."""
        ...

    async def next_deadline(self) -> datetime | None:
        """The earliest deadline of an active run, if any."""
        ...

    async def expire_due(self, now: datetime, limit: int) -> list[Run]:
        """Move up to `limit` active runs whose deadline is <= `now` to TIMEOUT.

        Each expiry is its own revision. Returns the expired runs. Safe to run on every
        replica at once: a run expires once.
        """
        ...

    async def next_lease_lapse(self) -> datetime | None:
        """The earliest lapse time of a held lease, if any."""
        ...

    async def expire_leases(self, now: datetime, limit: int) -> list[Run]:
        """Apply `rules.apply_lease_lapse` to up to `limit` RUNNING runs whose lease
        lapsed at or before `now` (back to PENDING, or ERROR "worker lost").

        Each lapse is its own revision. Returns the changed runs. Safe to run on every
        replica at once: a lease lapses once.
        """
        ...

    async def oldest_finished_at(self) -> datetime | None:
        """When the longest-finished run still stored finished (its updated_at)."""
        ...

    async def purge_finished(self, finished_before: datetime, limit: int) -> list[Run]:
        """Delete up to `limit` runs that finished at or before `finished_before`.

        Each deletion is its own revision (a DELETED change). Returns the deleted runs.
        Safe to run on every replica at once: a run is deleted once.
        """
        ...

    async def close(self) -> None:
        """Release connections and tasks; idempotent."""
        ...
