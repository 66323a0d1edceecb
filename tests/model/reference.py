"""The reference model: what the README promises, as small pure Python.

No store, no asyncio, no import of `runcontrol_server.domain.rules`: the rules are
restated here from the README ("The model", "Worker leases", "Multitask strategies",
"Idempotency, cancel and delete", "Waiting, deadlines and retention", "Watching runs")
so the implementation is checked against an independent statement of them.

The model decides every logical field of every run (status, worker, error, cancel
action and reason, attempts, lease, revisions). Timestamps are the store's clock, which
the model cannot know in advance (PostgreSQL stamps with the database's clock): it
adopts them from the records the implementation returns and decides from them what is
due at a given `now` (deadline, lease lapse, end of retention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from runcontrol_server.domain import (
    CancelAction,
    ChangeKind,
    CreateOutcome,
    EventType,
    MultitaskStrategy,
    Run,
    RunStatus,
)

PENDING, RUNNING = RunStatus.PENDING, RunStatus.RUNNING
ACTIVE = frozenset({PENDING, RUNNING})
TERMINAL = frozenset(RunStatus) - ACTIVE
# The status machine of the README's diagram (RUNNING -> PENDING is the service's own
# move on a lapsed lease, never a worker's).
LEGAL: dict[RunStatus, frozenset[RunStatus]] = {
    PENDING: frozenset({RUNNING, RunStatus.INTERRUPTED, RunStatus.ERROR, RunStatus.TIMEOUT}),
    RUNNING: frozenset(
        {RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.TIMEOUT, RunStatus.INTERRUPTED}
    ),
}
DEFAULT_CANCEL_REASON = "cancelled by client"
DEADLINE_ERROR = "deadline exceeded"
# A claim without worker_id gets a server-made claimer id with this prefix.
ANONYMOUS_PREFIX = "anonymous-"


def interrupt_reason(new_run_id: str, strategy: MultitaskStrategy) -> str:
    return f"interrupted by newer run {new_run_id} (multitask_strategy={strategy.value})"


def worker_lost(worker_id: str | None, attempt: int, max_attempts: int) -> str:
    return (
        f"worker lost: the lease of worker {worker_id!r} lapsed "
        f"(attempt {attempt} of {max_attempts})"
    )


class View(NamedTuple):
    """Every logical field of a run record: what the model predicts exactly."""

    run_id: str
    thread_id: str
    status: RunStatus
    worker_id: str | None
    error: str | None
    cancel_action: CancelAction
    cancel_reason: str | None
    attempt: int
    max_attempts: int
    lease_ttl: timedelta | None
    request_id: str | None
    create_revision: int
    mod_revision: int
    multitask_strategy: MultitaskStrategy
    timeout: timedelta | None  # deadline - created_at


def view_of(run: Run) -> View:
    return View(
        run.run_id,
        run.thread_id,
        run.status,
        run.worker_id,
        run.error,
        run.cancel_action,
        run.cancel_reason,
        run.attempt,
        run.max_attempts,
        run.lease_ttl,
        run.request_id,
        run.create_revision,
        run.mod_revision,
        run.multitask_strategy,
        None if run.deadline is None else run.deadline - run.created_at,
    )


@dataclass
class RefRun:
    run_id: str
    thread_id: str
    strategy: MultitaskStrategy
    request_id: str | None
    timeout: timedelta | None
    max_attempts: int
    create_revision: int
    mod_revision: int
    status: RunStatus = PENDING
    worker_id: str | None = None
    error: str | None = None
    cancel_action: CancelAction = CancelAction.INTERRUPT
    cancel_reason: str | None = None
    attempt: int = 0
    lease_ttl: timedelta | None = None
    # Adopted from the store: its last record (timestamps) and when the lease lapses.
    record: Run | None = None
    lapse: datetime | None = None
    # Every record it had once finished (WaitRun answers with one of them).
    terminal_records: list[Run] = field(default_factory=list)

    def view(self) -> View:
        return View(
            self.run_id,
            self.thread_id,
            self.status,
            self.worker_id,
            self.error,
            self.cancel_action,
            self.cancel_reason,
            self.attempt,
            self.max_attempts,
            self.lease_ttl,
            self.request_id,
            self.create_revision,
            self.mod_revision,
            self.strategy,
            self.timeout,
        )

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def deadline(self) -> datetime | None:
        assert self.record is not None
        return self.record.deadline

    @property
    def updated_at(self) -> datetime:
        assert self.record is not None
        return self.record.updated_at


# --- decisions: what a worker's status write does --------------------------------------


class Repeat(NamedTuple):
    """The move that already happened: success, `changed = false`, no revision."""


class Apply(NamedTuple):
    """An accepted move (a claim, a finish, or a cancelled run's worker note)."""

    note: bool = False


class Refused(NamedTuple):
    """The error the write must raise: its class name and the facts it carries."""

    error: str
    facts: tuple[object, ...] = ()


Decision = Repeat | Apply | Refused


def decide_status(
    run: RefRun,
    status: RunStatus,
    worker_id: str | None,
    error: str | None,
    expected_mod_revision: int | None,
    lease_ttl: timedelta | None,
    queued_behind: tuple[str, ...],
) -> Decision:
    """A worker's SetRunStatus. `worker_id` None on a claim means an anonymous claimer,
    which gets a new id: never equal to the current claimer's. `queued_behind`: the
    thread's active runs created before this one (ENQUEUE is FIFO)."""
    claim = status is RUNNING
    anonymous_claim = claim and worker_id is None
    # 1. Repeating the move that already happened (same status, worker and error).
    if run.status is status and error == run.error and status is not PENDING:
        same_worker = (
            (not anonymous_claim and worker_id == run.worker_id and lease_ttl == run.lease_ttl)
            if claim
            else worker_id in (None, run.worker_id)
        )
        if same_worker:
            return Repeat()
    # 2. Compare-and-set.
    if expected_mod_revision is not None and expected_mod_revision != run.mod_revision:
        return Refused("RevisionMismatch", (expected_mod_revision, run.mod_revision))
    # 2b. A run taken back from its worker (a lapsed lease, attempts left): only claims
    # and writes without a worker id; a worker's late write is refused.
    if run.status is PENDING and run.attempt and worker_id is not None and not claim:
        return Refused("LeaseNotHeld", (PENDING, None))
    # 3. The claiming worker's ERROR note on the run it was cancelled out of.
    if (
        run.status is RunStatus.INTERRUPTED
        and status is RunStatus.ERROR
        and error is not None
        and worker_id is not None
        and worker_id == run.worker_id
    ):
        return Apply(note=True) if error != run.error else Repeat()
    # 4. Exactly one claimer: another claim, or another named worker's finish.
    if (
        run.status is RUNNING
        and (anonymous_claim or worker_id != run.worker_id)
        and (claim or worker_id is not None)
    ):
        return Refused("AlreadyClaimed", (run.worker_id,))
    # 5. Illegal moves; a lease comes with a claim only; the queue's turn.
    if status not in LEGAL.get(run.status, frozenset()):
        return Refused("InvalidTransition", (run.status, status, ()))
    if lease_ttl is not None and not claim:
        return Refused("InvalidTransition", (run.status, status, ()))
    if claim and queued_behind:
        return Refused("InvalidTransition", (run.status, status, queued_behind))
    return Apply()


def apply_status(
    run: RefRun,
    status: RunStatus,
    worker_id: str | None,
    error: str | None,
    lease_ttl: timedelta | None,
    note: bool,
    revision: int,
) -> None:
    """The run after an accepted write (`worker_id`: the claimer's, made up if anonymous)."""
    run.mod_revision = revision
    if note:
        run.error = error
        return
    if error is not None:
        run.error = error
    if status is RUNNING:
        run.worker_id = worker_id
        run.attempt += 1
        run.lease_ttl = lease_ttl
    else:
        if run.worker_id is None:
            run.worker_id = worker_id
        run.lease_ttl = None
    run.status = status
    if run.lease_ttl is None:
        run.lapse = None


def apply_cancel(run: RefRun, action: CancelAction, reason: str, revision: int) -> None:
    run.status = RunStatus.INTERRUPTED
    run.cancel_action = action
    run.cancel_reason = reason
    run.lease_ttl = run.lapse = None
    run.mod_revision = revision


def apply_timeout(run: RefRun, revision: int) -> None:
    run.status = RunStatus.TIMEOUT
    if run.error is None:
        run.error = DEADLINE_ERROR
    run.lease_ttl = run.lapse = None
    run.mod_revision = revision


def apply_lapse(run: RefRun, revision: int) -> None:
    """A lapsed lease: back to PENDING while attempts remain, else ERROR "worker lost"."""
    if run.attempt < run.max_attempts:
        run.status = PENDING
        run.worker_id = None
    else:
        run.status = RunStatus.ERROR
        run.error = worker_lost(run.worker_id, run.attempt, run.max_attempts)
    run.lease_ttl = run.lapse = None
    run.mod_revision = revision


# --- what watchers see -------------------------------------------------------------------


def event_type(
    kind: ChangeKind,
    status: RunStatus,
    prev_status: RunStatus | None,
    matches: frozenset[RunStatus],
) -> EventType | None:
    """How a change looks through a status filter (`matches`; empty: every status), as
    README "Watching runs" says: into the filter ADDED, out of it DELETED, within it
    MODIFIED; a created run ADDED, a deleted one DELETED."""

    def inside(value: RunStatus | None) -> bool:
        return value is not None and (not matches or value in matches)

    before = kind is not ChangeKind.CREATED and inside(prev_status)
    after = kind is not ChangeKind.DELETED and inside(status)
    if before and after:
        return EventType.MODIFIED
    if after:
        return EventType.ADDED
    if before:
        return EventType.DELETED
    return None


# --- the whole registry ------------------------------------------------------------------


@dataclass
class Reference:
    revision: int
    runs: dict[str, RefRun] = field(default_factory=dict)
    # request_id -> (the request's identity, the run it created, its first answer)
    requests: dict[str, tuple[tuple[object, ...], str, CreateOutcome]] = field(default_factory=dict)

    def active(self, thread_id: str) -> list[str]:
        """The thread's active runs, oldest first."""
        found = [r for r in self.runs.values() if r.thread_id == thread_id and r.active]
        return [r.run_id for r in sorted(found, key=lambda r: r.create_revision)]

    def queued_behind(self, run: RefRun) -> tuple[str, ...]:
        return tuple(
            rid
            for rid in self.active(run.thread_id)
            if self.runs[rid].create_revision < run.create_revision
        )

    def newest_first(self) -> list[RefRun]:
        return sorted(self.runs.values(), key=lambda r: -r.create_revision)

    def remove(self, run_id: str) -> RefRun:
        """A deleted run; its request_id is forgotten with it."""
        run = self.runs.pop(run_id)
        if (
            run.request_id is not None
            and self.requests.get(run.request_id, (None, ""))[1] == run_id
        ):
            del self.requests[run.request_id]
        return run

    # What falls due at `now` (the janitor's three jobs), earliest first.

    def deadlines_due(self, now: datetime) -> list[RefRun]:
        due = [r for r in self.runs.values() if r.active and r.deadline and r.deadline <= now]
        return sorted(due, key=lambda r: r.deadline or now)

    def leases_due(self, now: datetime) -> list[RefRun]:
        due = [r for r in self.runs.values() if r.lapse is not None and r.lapse <= now]
        return sorted(due, key=lambda r: r.lapse or now)

    def finished_before(self, before: datetime) -> list[RefRun]:
        due = [r for r in self.runs.values() if not r.active and r.updated_at <= before]
        return sorted(due, key=lambda r: r.updated_at)

    def next_deadline(self) -> datetime | None:
        return min(
            (r.deadline for r in self.runs.values() if r.active and r.deadline), default=None
        )

    def next_lapse(self) -> datetime | None:
        return min((r.lapse for r in self.runs.values() if r.lapse is not None), default=None)

    def oldest_finished(self) -> datetime | None:
        return min((r.updated_at for r in self.runs.values() if not r.active), default=None)
