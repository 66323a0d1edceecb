"""The store protocol: whole atomic operations, not get/put.

Each method is one atomic step over the whole registry, so a store holds the
invariants its own way (the in-memory store within one event-loop step, PostgreSQL
within one transaction) while the rules themselves come from `rules`. Every change
takes the next value of ONE store-wide revision counter; all runs changed by one
operation share that revision and are published as one `ChangeSet`.

Errors each method may raise are listed on it; they are the only ones a caller has
to handle (anything else is a bug or an outage).
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
    Inflight,
    ListQuery,
    Run,
    RunDraft,
    RunPage,
    StatusChange,
    TransitionOutcome,
)


class RunStore(Protocol):
    async def create_run(self, draft: RunDraft) -> CreateOutcome:
        """Apply the draft's multitask strategy to the thread and insert a PENDING run.

        With a request_id already seen: the same request (`RunDraft.fingerprint`) gets
        the first answer again with `replayed=True`; another request raises.
        Raises: ThreadBusy, RequestIdReused.
        """
        ...

    async def get_run(self, run_id: str) -> Run:
        """Raises: RunNotFound."""
        ...

    async def set_status(self, change: StatusChange) -> TransitionOutcome:
        """Raises: RunNotFound, InvalidTransition, AlreadyClaimed, RevisionMismatch."""
        ...

    async def cancel_run(self, run_id: str, action: CancelAction, reason: str) -> CancelOutcome:
        """Interrupt an active run; a finished run is returned unchanged. Raises: RunNotFound."""
        ...

    async def delete_run(self, run_id: str, expected_mod_revision: int | None) -> DeleteOutcome:
        """Remove a finished run. Raises: RunNotFound, RunActive, RevisionMismatch."""
        ...

    async def list_runs(self, query: ListQuery) -> RunPage:
        """One page, newest first by (created_at, create_revision); keyset on `query.after`."""
        ...

    async def inflight(self, thread_id: str) -> Inflight:
        """The thread's active runs, oldest first."""
        ...

    async def revision(self) -> int:
        """The store's current revision (0 before the first change)."""
        ...

    async def changes_since(self, revision: int) -> Sequence[ChangeSet]:
        """Kept change sets with a revision >= `revision`, in order.

        Raises: RevisionCompacted when changes at `revision` are no longer kept.
        """
        ...

    @property
    def history(self) -> ChangeHistory:
        """Every change set this store commits, in revision order, as this process sees it."""
        ...

    def now(self) -> datetime:
        """The store's clock (UTC, never going backwards): deadlines and retention use it."""
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

        Each expiry is its own revision. Returns the expired runs.
        """
        ...

    async def oldest_finished_at(self) -> datetime | None:
        """When the longest-finished run still stored finished (its updated_at)."""
        ...

    async def purge_finished(self, finished_before: datetime, limit: int) -> list[Run]:
        """Delete up to `limit` runs that finished at or before `finished_before`.

        Each deletion is its own revision (a DELETED change). Returns the deleted runs.
        """
        ...

    async def close(self) -> None: ...
