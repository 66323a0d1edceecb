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
from typing import Protocol

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

    async def close(self) -> None: ...
