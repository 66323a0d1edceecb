"""The rules every store shares: the status machine and the multitask strategies.

Pure functions over records. A store calls them inside its own atomic section (one
event-loop step in memory, one transaction in PostgreSQL), so the rules are written
once and every store enforces them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from .errors import (
    AlreadyClaimed,
    InvalidTransition,
    LeaseNotHeld,
    LimitExceeded,
    RevisionMismatch,
    ThreadBusy,
)
from .limits import DEFAULT_STORE_LIMITS, StoreLimits
from .model import (
    CancelAction,
    MultitaskStrategy,
    Run,
    RunDraft,
    RunStatus,
    StatusChange,
)

# The status machine, as ONE table: status -> statuses it may move to.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(
        {RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.ERROR, RunStatus.TIMEOUT}
    ),
    RunStatus.RUNNING: frozenset(
        {RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.TIMEOUT, RunStatus.INTERRUPTED}
    ),
    RunStatus.SUCCESS: frozenset(),
    RunStatus.ERROR: frozenset(),
    RunStatus.TIMEOUT: frozenset(),
    RunStatus.INTERRUPTED: frozenset(),
}

DEFAULT_CANCEL_REASON = "cancelled by client"


def can_move(from_status: RunStatus, to_status: RunStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def check_transition(run: Run, change: StatusChange, earlier_active: Sequence[str]) -> bool:
    """Decide a worker's status change.

    Returns False when the change repeats the transition that already happened (same
    status, same worker, same error; for a claim, the same lease): an idempotent success
    that must not use a new revision. Returns True when the change must be applied.
    Raises otherwise.

    `earlier_active` are the ids of the thread's active runs created before `run`: a
    run may not be claimed while any of them is active (ENQUEUE is FIFO per thread).
    The repeat check runs before the compare-and-set so that a retried call whose
    first attempt succeeded still succeeds.
    """
    if _is_repeat(run, change):
        return False
    if (
        change.expected_mod_revision is not None
        and change.expected_mod_revision != run.mod_revision
    ):
        raise RevisionMismatch(run.run_id, change.expected_mod_revision, run.mod_revision)
    if (
        run.status is RunStatus.PENDING
        and run.attempt
        and change.worker_id is not None
        and change.status is not RunStatus.RUNNING
    ):
        # A run taken back from its worker (lapsed lease): a worker's late write must not
        # end the attempt that is waiting for the next claim. Claims, and writes without
        # a worker id (an operator), are still taken.
        raise LeaseNotHeld(run.run_id, run.status, None)
    if is_cancel_note(run, change):
        return change.error != run.error  # the same note again is a repeat
    if (
        run.status is RunStatus.RUNNING
        and change.worker_id != run.worker_id
        and (change.status is RunStatus.RUNNING or change.worker_id is not None)
    ):
        # Another worker claims a claimed run, or a different worker tries to finish it.
        raise AlreadyClaimed(run.run_id, run.worker_id)
    if not can_move(run.status, change.status):
        raise InvalidTransition(run.run_id, run.status, change.status)
    if change.lease_ttl is not None and change.status is not RunStatus.RUNNING:
        raise InvalidTransition(
            run.run_id, run.status, change.status, detail="a lease comes with a claim"
        )
    if change.status is RunStatus.RUNNING and earlier_active:
        raise InvalidTransition(run.run_id, run.status, change.status, queued_behind=earlier_active)
    return True


def is_cancel_note(run: Run, change: StatusChange) -> bool:
    """The claiming worker's ERROR write, with its note, on the run it was cancelled out
    of (e.g. "Rolled back by user" after a ROLLBACK): the note is recorded in `error`
    and the run stays INTERRUPTED, so readers see both the cancel (status and
    `cancel_action`) and what the worker did about it. A terminal status never reopens.
    """
    return (
        run.status is RunStatus.INTERRUPTED
        and change.status is RunStatus.ERROR
        and change.error is not None
        and change.worker_id is not None
        and change.worker_id == run.worker_id
    )


def _is_repeat(run: Run, change: StatusChange) -> bool:
    if run.status is not change.status or change.error != run.error:
        return False
    if change.status is RunStatus.PENDING:
        return False  # nothing ever moves *to* PENDING, so there is nothing to repeat
    if change.status is RunStatus.RUNNING:
        # A claim repeats only for the very same worker (None included), so that
        # exactly one of several anonymous or named claimers wins, and with the same
        # lease: a claim asking for another lease than the one held is refused, never
        # silently "repeated" (the worker would believe it holds that lease).
        return change.worker_id == run.worker_id and change.lease_ttl == run.lease_ttl
    # A terminal status repeated by the claiming worker, or by a caller that gives no id.
    return change.worker_id is None or change.worker_id == run.worker_id


def apply_transition(run: Run, change: StatusChange, now: datetime, revision: int) -> Run:
    """The record after an accepted `change` (see `check_transition`)."""
    if is_cancel_note(run, change):
        return run._replace(error=change.error, updated_at=now, mod_revision=revision)
    if change.status is RunStatus.RUNNING:  # a claim: a new attempt, with its lease
        return run._replace(
            status=RunStatus.RUNNING,
            error=change.error if change.error is not None else run.error,
            worker_id=change.worker_id,
            attempt=run.attempt + 1,
            lease_ttl=change.lease_ttl,
            updated_at=now,
            mod_revision=revision,
        )
    worker_id = run.worker_id
    if worker_id is None and change.worker_id is not None:
        worker_id = change.worker_id
    return run._replace(
        status=change.status,
        error=change.error if change.error is not None else run.error,
        worker_id=worker_id,
        lease_ttl=None,
        updated_at=now,
        mod_revision=revision,
    )


def apply_cancel(run: Run, action: CancelAction, reason: str, now: datetime, revision: int) -> Run:
    """An active run interrupted by a cancel or by a newer run."""
    return run._replace(
        status=RunStatus.INTERRUPTED,
        cancel_action=action,
        cancel_reason=reason,
        lease_ttl=None,
        updated_at=now,
        mod_revision=revision,
    )


def apply_timeout(run: Run, now: datetime, revision: int) -> Run:
    """An unfinished run whose deadline passed."""
    return run._replace(
        status=RunStatus.TIMEOUT,
        error=run.error if run.error is not None else "deadline exceeded",
        lease_ttl=None,
        updated_at=now,
        mod_revision=revision,
    )


def worker_lost_reason(run: Run) -> str:
    return (
        f"worker lost: the lease of worker {run.worker_id!r} lapsed "
        f"(attempt {run.attempt} of {run.max_attempts})"
    )


def apply_lease_lapse(run: Run, now: datetime, revision: int) -> Run:
    """A RUNNING run whose worker stopped renewing its lease: back to PENDING for another
    claim while it has attempts left (keeping its place in the thread's queue), else
    ERROR. The only move to PENDING, and only the service makes it."""
    if run.attempt < run.max_attempts:
        return run._replace(
            status=RunStatus.PENDING,
            worker_id=None,
            lease_ttl=None,
            updated_at=now,
            mod_revision=revision,
        )
    return run._replace(
        status=RunStatus.ERROR,
        error=worker_lost_reason(run),
        lease_ttl=None,
        updated_at=now,
        mod_revision=revision,
    )


def check_renewal(run: Run, worker_id: str) -> None:
    """A lease renewal is for the RUNNING run's claimer, under a claim with a lease."""
    if run.status is not RunStatus.RUNNING or run.lease_ttl is None or run.worker_id != worker_id:
        raise LeaseNotHeld(run.run_id, run.status, run.worker_id)


class CreatePlan(NamedTuple):
    """What creating a run on a thread does to the thread's active runs."""

    interrupt: tuple[Run, ...]
    cancel_action: CancelAction
    queued_behind: tuple[str, ...]


def plan_create(
    draft: RunDraft, active: Sequence[Run], limits: StoreLimits = DEFAULT_STORE_LIMITS
) -> CreatePlan:
    """Apply the multitask strategy to the thread's active runs (oldest first).

    Only ENQUEUE adds an active run to a busy thread, so only it can pass
    `limits.max_active_runs_per_thread` (the others leave one active run).
    """
    strategy = draft.multitask_strategy
    if not active:
        return CreatePlan((), CancelAction.INTERRUPT, ())
    if strategy is MultitaskStrategy.REJECT:
        raise ThreadBusy(draft.thread_id, [r.run_id for r in active])
    if strategy is MultitaskStrategy.ENQUEUE:
        if len(active) >= limits.max_active_runs_per_thread:
            raise LimitExceeded(
                "max_active_runs_per_thread",
                f"thread {draft.thread_id!r} has {len(active)} active runs; at most "
                f"{limits.max_active_runs_per_thread} may be active (queued) at once",
            )
        return CreatePlan((), CancelAction.INTERRUPT, tuple(r.run_id for r in active))
    action = (
        CancelAction.ROLLBACK if strategy is MultitaskStrategy.ROLLBACK else CancelAction.INTERRUPT
    )
    return CreatePlan(tuple(active), action, ())


def check_stored_runs(stored: int, limits: StoreLimits = DEFAULT_STORE_LIMITS) -> None:
    """A create may add a run while fewer than `limits.max_stored_runs` are stored."""
    if stored >= limits.max_stored_runs:
        raise LimitExceeded(
            "max_stored_runs",
            f"the store holds {stored} runs (the limit is {limits.max_stored_runs}): "
            "delete finished runs or wait for retention to remove them",
        )


def interrupt_reason(new_run_id: str, strategy: MultitaskStrategy) -> str:
    return f"interrupted by newer run {new_run_id} (multitask_strategy={strategy.value})"


def new_run(draft: RunDraft, now: datetime, revision: int) -> Run:
    return Run(
        run_id=draft.run_id,
        thread_id=draft.thread_id,
        assistant_id=draft.assistant_id,
        status=RunStatus.PENDING,
        on_disconnect=draft.on_disconnect,
        multitask_strategy=draft.multitask_strategy,
        metadata_json=draft.metadata_json,
        kwargs_json=draft.kwargs_json,
        created_at=now,
        updated_at=now,
        create_revision=revision,
        mod_revision=revision,
        deadline=None if draft.timeout is None else now + draft.timeout,
        request_id=draft.request_id,
        max_attempts=draft.max_attempts,
    )
