"""Model-based test: `RunManager` over every store against the reference model.

A Hypothesis `RuleBasedStateMachine` drives the manager through creates under every
multitask strategy (with and without request_id replays), claims (named, anonymous,
with leases, racing), every worker transition (legal and illegal), cancels, deletes,
lease renewals, waits, attached waits that go away, watchers that resume from an
earlier revision, and time: the clock is moved explicitly and deadlines, lease lapses
and retention are applied with explicit `now` arguments (`expire_due`,
`expire_leases`, `purge_finished`, exactly at a due time too) or by one janitor round
(`sweep`), also racing a client (deadline vs cancel, lapse vs the worker's finish,
retention vs a create on the same thread: each change happens once, in either order).
The in-memory store gets an injected clock; PostgreSQL keeps the database's clock, so
its `now` is `store.now()` plus the offset the program has advanced.

After every step the implementation must agree with `reference.Reference`:

* the store's change feed since the last step (`read_changes`) holds exactly the
  predicted change sets, gapless and in revision order: kind, the run's record (every
  logical field predicted by the model) and prev_status;
* a live unfiltered watcher delivers one batch per revision with those changes, and a
  live watcher of thread t1's active runs delivers exactly the ADDED / MODIFIED /
  DELETED events the README's rules predict for its filter;
* the revision, the list (newest first, every record), snapshots, each thread's
  active runs (HasInflight), the janitor's next due times, and waiters answered exactly
  when their run ends; for the in-memory store also the sizes of its indexes.

The counts (programs, steps; with the thorough profile every rule and behaviour
reached) are printed at the end of each store's test. A divergence shows as Hypothesis's
shortest failing program; keep it as a `test_regression_*` below (see `replay`).

PostgreSQL reuses one database per test and empties it between programs (the revision
counter carries on: the model starts at the store's revision).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runcontrol_server.domain import (
    AlreadyClaimed,
    CancelAction,
    Change,
    ChangeKind,
    ChangeSet,
    EventType,
    InvalidTransition,
    LeaseNotHeld,
    ListQuery,
    MonotonicClock,
    MultitaskStrategy,
    RequestIdReused,
    RevisionMismatch,
    Run,
    RunActive,
    RunControlError,
    RunManager,
    RunNotFound,
    RunStatus,
    RunStore,
    ThreadBusy,
    TransitionOutcome,
    WatchBatch,
    Watcher,
    WatchFilter,
)
from runcontrol_server.stores import InMemoryRunStore
from runcontrol_server.stores.postgres import PostgresRunStore

from .conftest import SHORT, THOROUGH
from .reference import (
    ACTIVE,
    ANONYMOUS_PREFIX,
    DEFAULT_CANCEL_REASON,
    RUNNING,
    Apply,
    Decision,
    Reference,
    RefRun,
    Refused,
    Repeat,
    apply_cancel,
    apply_lapse,
    apply_status,
    apply_timeout,
    decide_status,
    event_type,
    interrupt_reason,
    view_of,
)

T = TypeVar("T")
E = TypeVar("E", bound=RunControlError)

MINUTE = timedelta(minutes=1)
# The janitor's retention (sweep); `purge` draws its own. Every duration is minutes
# long, so real time passing during a program (PostgreSQL's clock) never decides
# anything: only the program's explicit advances do.
RETENTION = 60 * MINUTE
THREADS = ("t1", "t2")
ALL_STATUSES: frozenset[RunStatus] = frozenset()
T1_ACTIVE = WatchFilter(thread_id="t1", statuses=frozenset(ACTIVE))
READ_TIMEOUT = 10.0  # a watcher batch or a waiter that is due: bounded, never a proof
RESET_POSTGRES = (
    b"DELETE FROM rc_requests; DELETE FROM rc_runs; DELETE FROM rc_threads;"
    b" DELETE FROM rc_changes;"
    b" UPDATE rc_compaction SET revision = (SELECT head FROM rc_revision)"
)
DISCONNECT_REASON = "client disconnected while attached (WaitRun)"

ERRORS: dict[str, type[RunControlError]] = {
    "RevisionMismatch": RevisionMismatch,
    "AlreadyClaimed": AlreadyClaimed,
    "InvalidTransition": InvalidTransition,
    "LeaseNotHeld": LeaseNotHeld,
}

RUN = st.integers(min_value=0, max_value=63)  # an index into the program's run ids
WORKERS = st.sampled_from([None, "w1", "w2"])
LEASES = st.sampled_from([None, 5 * MINUTE, 15 * MINUTE])


class FakeTime:
    """The in-memory store's clock source: moves only when the program advances it."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    """One store kind's test: its event loop, the shared PostgreSQL store, the counts."""

    kind: str
    loop: asyncio.AbstractEventLoop
    pg_store: PostgresRunStore | None = None
    pg_admin: psycopg.AsyncConnection[Any] | None = None
    programs: int = 0
    steps: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


async def next_batch(watcher: Watcher) -> WatchBatch:
    async with asyncio.timeout(READ_TIMEOUT):
        while True:
            batch = await anext(watcher)
            if not batch.progress_only:
                return batch


def pairwise_ok(values: Sequence[Any], ok: Callable[[Any, Any], bool]) -> bool:
    return all(ok(a, b) for a, b in itertools.pairwise(values))


class ModelMachine(RuleBasedStateMachine):
    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        env.programs += 1
        self.memory = env.kind == "memory"
        self.fake = FakeTime()
        self.offset = timedelta(0)  # PostgreSQL: how far the program moved its "now"
        self.store: RunStore = env.run(self._open_store())
        # Deterministic ids (Hypothesis replays programs); anonymous claimers take one too.
        counter = itertools.count(1)
        self.manager = RunManager(
            self.store, new_id=lambda: f"run-{next(counter):04d}", retention=RETENTION
        )
        base = env.run(self.store.revision())
        self.ref = Reference(revision=base)
        self.ids: list[str] = []  # every run id this program created, deleted ones too
        self.expected: list[ChangeSet] = []  # predicted, not yet compared with the feed
        self.checked = base  # the feed is verified up to here
        self.verified: list[ChangeSet] = []  # every change set of this program, verified
        self.last_stamp = datetime.min.replace(tzinfo=UTC)
        self.racers = itertools.count(1)
        self.last_create: tuple[str, MultitaskStrategy, str | None, timedelta | None, int] | None
        self.last_create = None
        self.waits: list[tuple[str, asyncio.Task[tuple[Run, bool]]]] = []
        self.waits_started = 0
        self.watch_all, self.watch_t1 = env.run(self._open_watchers())
        self.ok = True

    # -- plumbing ------------------------------------------------------------------------

    async def _open_store(self) -> RunStore:
        if self.memory:
            # No age bound on the feed: the program jumps the clock by an hour at once,
            # which to a watcher that is not reading at that moment (ours read between
            # steps) looks like an hour of not reading; the count bound still holds.
            return InMemoryRunStore(clock=MonotonicClock(self.fake), history_max_age=None)
        assert self.env.pg_store is not None and self.env.pg_admin is not None
        await self.env.pg_admin.execute(RESET_POSTGRES)
        return self.env.pg_store

    async def _open_watchers(self) -> tuple[Watcher, Watcher]:
        hour = 3600.0
        return (
            await self.manager.watch(WatchFilter(), progress_interval=hour),
            await self.manager.watch(T1_ACTIVE, progress_interval=hour),
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.env.run(coro)

    def step(self, name: str) -> None:
        self.ok = False  # until the invariants after this step pass
        self.env.steps += 1
        self.env.rules[name] += 1

    def fails(self, coro: Coroutine[Any, Any, Any], error: type[E]) -> E:
        try:
            self.run(coro)
        except RunControlError as raised:
            assert type(raised) is error, f"expected {error.__name__}, got {raised!r}"
            return raised
        raise AssertionError(f"expected {error.__name__}, the call succeeded")

    def pick(self, which: int, active: bool = False) -> tuple[str, RefRun | None]:
        """One of the program's runs (deleted ones too); with `active`, an active one
        when there is one, so claims and finishes are not mostly refusals."""
        ids = self.ids
        if active:
            ids = [i for i in ids if i in self.ref.runs and self.ref.runs[i].active] or ids
        run_id = ids[which % len(ids)]
        return run_id, self.ref.runs.get(run_id)

    def saw(self, behaviour: str) -> None:
        """Count a behaviour the program reached (reported with the step counts)."""
        self.env.seen[behaviour] += 1

    async def now(self) -> datetime:
        """The program's "now" on the store's clock."""
        now = await self.store.now()
        if self.memory:
            assert now == self.fake.now
        return now + self.offset

    def adopt(self, run: RefRun, record: Run) -> None:
        """Check a record the implementation returned against the model, keep its times."""
        assert view_of(record) == run.view(), (view_of(record), run.view())
        # Written at this revision, so stamped now: the store's clock never goes back.
        assert record.mod_revision == self.ref.revision
        assert record.updated_at >= self.last_stamp
        if self.memory:
            assert record.updated_at == self.fake.now  # the injected clock, exactly
        self.last_stamp = record.updated_at
        if run.status not in ACTIVE:  # it ended (or, cancelled, got its worker's note)
            run.terminal_records.append(record)
        run.record = record

    def expect(self, *changes: Change) -> None:
        self.expected.append(ChangeSet(self.ref.revision, changes))

    def next_revision(self) -> int:
        self.ref.revision += 1
        return self.ref.revision

    # -- creating runs -------------------------------------------------------------------

    @rule(
        thread=st.sampled_from(THREADS),
        strategy=st.sampled_from(MultitaskStrategy),
        request_id=st.sampled_from([None, None, "req-1", "req-2"]),
        timeout=st.sampled_from([None, 20 * MINUTE, 60 * MINUTE]),
        max_attempts=st.sampled_from([1, 2]),
    )
    def create(
        self,
        thread: str,
        strategy: MultitaskStrategy,
        request_id: str | None,
        timeout: timedelta | None,
        max_attempts: int,
    ) -> None:
        self.step("create")
        ref = self.ref
        request = (thread, strategy, timeout, max_attempts)
        self.last_create = (thread, strategy, request_id, timeout, max_attempts)
        call = self.manager.create_run(
            thread,
            multitask_strategy=strategy,
            request_id=request_id,
            run_timeout=timeout,
            max_attempts=max_attempts,
        )
        if request_id is not None and request_id in ref.requests:
            seen, first_run_id, first = ref.requests[request_id]
            if seen != request:
                self.saw("request_id reused")
                reused = self.fails(call, RequestIdReused)
                assert (reused.request_id, reused.run_id) == (request_id, first_run_id)
                return
            self.saw("request_id replayed")
            replay = self.run(call)
            assert replay == first._replace(replayed=True)  # the FIRST answer, as it was
            return
        active = ref.active(thread)
        if active and strategy is MultitaskStrategy.REJECT:
            self.saw("REJECT: thread busy")
            busy = self.fails(call, ThreadBusy)
            assert (busy.thread_id, busy.inflight_run_ids) == (thread, tuple(active))
            return
        outcome = self.run(call)
        revision = self.next_revision()
        new = outcome.run
        assert new.run_id not in self.ids and not outcome.replayed
        changes: list[Change] = []
        interrupt = strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK)
        assert [r.run_id for r in outcome.interrupted] == (active if interrupt else [])
        action = (
            CancelAction.ROLLBACK
            if strategy is MultitaskStrategy.ROLLBACK
            else CancelAction.INTERRUPT
        )
        for record in outcome.interrupted:
            old = ref.runs[record.run_id]
            prev = old.status
            apply_cancel(old, action, interrupt_reason(new.run_id, strategy), revision)
            self.adopt(old, record)
            changes.append(Change(ChangeKind.UPDATED, record, prev))
        if outcome.interrupted:
            self.saw(f"{strategy.value} interrupted runs")
        queued = tuple(active) if strategy is MultitaskStrategy.ENQUEUE else ()
        if queued:
            self.saw("ENQUEUE queued a run")
        assert outcome.queued_behind == queued
        run = RefRun(
            new.run_id, thread, strategy, request_id, timeout, max_attempts, revision, revision
        )
        ref.runs[new.run_id] = run
        self.ids.append(new.run_id)
        self.adopt(run, new)
        assert new.created_at == new.updated_at
        changes.append(Change(ChangeKind.CREATED, new, None))
        self.expect(*changes)
        if request_id is not None:
            ref.requests[request_id] = (request, new.run_id, outcome)

    @precondition(lambda self: self.last_create is not None)
    @rule()
    def retry_create(self) -> None:
        """The client retries its last CreateRun as it was (a replay when it had a
        request_id that is still remembered)."""
        assert self.last_create is not None
        self.create(*self.last_create)

    @rule(thread=st.sampled_from(THREADS))
    def race_creates(self, thread: str) -> None:
        """Three REJECT creates at once: on an idle thread exactly one wins."""
        self.step("race_creates")

        async def create() -> Any:
            try:
                return await self.manager.create_run(thread)
            except RunControlError as error:
                return error

        results = self.run(_gather(create() for _ in range(3)))
        active = self.ref.active(thread)
        winners = [r for r in results if not isinstance(r, RunControlError)]
        if active:
            assert winners == []
        else:
            assert len(winners) == 1, results
            self.saw("racing creates: one won")
            active = [winners[0].run.run_id]
            new = winners[0].run
            revision = self.next_revision()
            run = RefRun(
                new.run_id, thread, MultitaskStrategy.REJECT, None, None, 1, revision, revision
            )
            self.ref.runs[new.run_id] = run
            self.ids.append(new.run_id)
            self.adopt(run, new)
            self.expect(Change(ChangeKind.CREATED, new, None))
        for result in results:
            if isinstance(result, RunControlError):
                assert isinstance(result, ThreadBusy), result
                assert result.inflight_run_ids == tuple(active)

    # -- workers -------------------------------------------------------------------------

    @precondition(lambda self: self.ids)
    @rule(which=RUN, active=st.booleans(), worker=WORKERS, lease=LEASES)
    def claim(self, which: int, active: bool, worker: str | None, lease: timedelta | None) -> None:
        self.step("claim")
        self._set_status(which, active, RUNNING, worker, None, None, lease)

    @precondition(lambda self: self.ids)
    @rule(
        which=RUN,
        active=st.booleans(),
        status=st.sampled_from(RunStatus),
        worker=WORKERS,
        error=st.sampled_from([None, "boom", "Rolled back by user"]),
        expected=st.sampled_from([None, "current", "stale"]),
        lease=st.sampled_from([None, None, None, 5 * MINUTE]),
    )
    def set_status(
        self,
        which: int,
        active: bool,
        status: RunStatus,
        worker: str | None,
        error: str | None,
        expected: str | None,
        lease: timedelta | None,
    ) -> None:
        self.step("set_status")
        self._set_status(which, active, status, worker, error, expected, lease)

    @rule(
        which=RUN,
        status=st.sampled_from(
            [RunStatus.SUCCESS, RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.INTERRUPTED]
        ),
        error=st.sampled_from([None, "boom", "Rolled back by user"]),
    )
    def worker_finishes(self, which: int, status: RunStatus, error: str | None) -> None:
        """The worker that claimed a run writes its end (or, when the run was cancelled
        meanwhile, its note): the claiming worker's id, a RUNNING run preferred."""
        self.step("worker_finishes")
        claimed = [r for r in self.ref.runs.values() if r.worker_id is not None]
        if not claimed:
            self.saw("no-op (no run was ever claimed)")
            return
        running = [r for r in claimed if r.status is RUNNING]
        run = (running or claimed)[which % len(running or claimed)]
        index = self.ids.index(run.run_id)
        if status is not RunStatus.SUCCESS and error is None:
            error = "boom"
        self._set_status(index, False, status, run.worker_id, error, None, None, index=True)

    def _set_status(
        self,
        which: int,
        active: bool,
        status: RunStatus,
        worker: str | None,
        error: str | None,
        expected: str | None,
        lease: timedelta | None,
        *,
        index: bool = False,
    ) -> None:
        """`index`: `which` is the run's index in `self.ids` (not a pick)."""
        if index:
            run_id = self.ids[which]
            run: RefRun | None = self.ref.runs[run_id]
        else:
            run_id, run = self.pick(which, active)
        mod_revision = run.mod_revision if run is not None else 1
        expected_revision = {None: None, "current": mod_revision, "stale": mod_revision - 1}[
            expected
        ]
        call = self.manager.set_status(
            run_id,
            status,
            error=error,
            worker_id=worker,
            expected_mod_revision=expected_revision,
            lease_ttl=lease,
        )
        if run is None:
            self.saw("unknown run: not found")
            self.fails(call, RunNotFound)
            return
        decision = decide_status(
            run,
            status,
            worker,
            error,
            expected_revision,
            lease,
            self.ref.queued_behind(run),
        )
        if isinstance(decision, Refused):
            queued = decision.error == "InvalidTransition" and decision.facts[-1]
            self.saw(f"write refused: {decision.error}" + (" (queued)" if queued else ""))
            self.check_refusal(self.fails(call, ERRORS[decision.error]), decision)
            return
        outcome = self.run(call)
        self.check_write(run, outcome, status, worker, error, lease, decision)

    def check_refusal(self, error: RunControlError, decision: Refused) -> None:
        if isinstance(error, RevisionMismatch):
            assert (error.expected, error.actual) == decision.facts
        elif isinstance(error, AlreadyClaimed):
            assert (error.worker_id,) == decision.facts
        elif isinstance(error, LeaseNotHeld):
            assert (error.status, error.worker_id) == decision.facts
        elif isinstance(error, InvalidTransition):
            from_status, to_status, queued = decision.facts
            assert isinstance(from_status, RunStatus) and isinstance(to_status, RunStatus)
            assert (error.from_status, error.to_status, error.queued_behind) == (
                from_status.value,
                to_status.value,
                queued,
            )

    def check_write(
        self,
        run: RefRun,
        outcome: TransitionOutcome,
        status: RunStatus,
        worker: str | None,
        error: str | None,
        lease: timedelta | None,
        decision: Decision,
    ) -> None:
        if isinstance(decision, Repeat):
            self.saw("write repeated (changed = false)")
            assert not outcome.changed
            assert outcome.run == run.record
            return
        assert isinstance(decision, Apply)
        assert outcome.changed
        revision = self.next_revision()
        prev = run.status
        claimer = worker
        self.saw(
            "worker note on a cancelled run"
            if decision.note
            else f"{prev.value} -> {status.value}" + (" with lease" if lease else "")
        )
        if status is RUNNING and worker is None and not decision.note:
            claimer = outcome.run.worker_id
            assert claimer is not None and claimer.startswith(ANONYMOUS_PREFIX), claimer
        apply_status(run, status, claimer, error, lease, decision.note, revision)
        self.adopt(run, outcome.run)
        if run.lease_ttl is not None:  # a claim that took a lease: it lapses a TTL later
            run.lapse = outcome.run.updated_at + run.lease_ttl
        self.expect(Change(ChangeKind.UPDATED, outcome.run, prev))

    @precondition(lambda self: self.ids)
    @rule(which=RUN)
    def race_claims(self, which: int) -> None:
        """Three workers claim one run at once: at most one wins, the others are told."""
        self.step("race_claims")
        run_id, run = self.pick(which)
        workers = [f"racer-{next(self.racers)}" for _ in range(3)]

        async def claim(worker: str) -> Any:
            try:
                return await self.manager.set_status(run_id, RUNNING, worker_id=worker)
            except RunControlError as error:
                return error

        results = self.run(_gather(claim(w) for w in workers))
        if run is None:
            assert all(isinstance(r, RunNotFound) for r in results), results
            return
        decision = decide_status(
            run, RUNNING, workers[0], None, None, None, self.ref.queued_behind(run)
        )
        if isinstance(decision, Refused):
            for result in results:
                assert isinstance(result, ERRORS[decision.error]), result
                self.check_refusal(result, decision)
            return
        (winner,) = [r for r in results if isinstance(r, TransitionOutcome)]
        self.saw("racing claims: one won")
        worker = winner.run.worker_id
        assert worker in workers
        for result in results:
            if result is not winner:
                assert isinstance(result, AlreadyClaimed) and result.worker_id == worker, result
        self.check_write(run, winner, RUNNING, worker, None, None, decision)

    @precondition(lambda self: self.ids)
    @rule(which=RUN, worker=st.sampled_from(["claimer", "w1", "w2"]))
    def renew(self, which: int, worker: str) -> None:
        self.step("renew")
        run_id, run = self.pick(which, active=True)
        worker_id = worker
        if worker == "claimer" and run is not None and run.worker_id is not None:
            worker_id = run.worker_id  # the run's current claimer, an anonymous one too
        if run is None:
            self.fails(self.manager.renew_lease(run_id, worker_id), RunNotFound)
            return
        if run.status is not RUNNING or run.lease_ttl is None or worker_id != run.worker_id:
            self.saw("renewal refused")
            refused = self.fails(self.manager.renew_lease(run_id, worker_id), LeaseNotHeld)
            assert (refused.status, refused.worker_id) == (run.status.value, run.worker_id)
            return
        lower = self.run(self.store.now())
        record, lapse = self.run(self.manager.renew_lease(run_id, worker_id))
        upper = self.run(self.store.now())
        assert record == run.record  # no revision, no change: a heartbeat
        self.saw("lease renewed")
        assert lower + run.lease_ttl <= lapse <= upper + run.lease_ttl
        run.lapse = lapse

    @rule(back=st.integers(min_value=0, max_value=60))
    def resume_watch(self, back: int) -> None:
        """A watcher that resumes `back` revisions ago replays exactly what happened
        since, each revision once, in order (then it is caught up)."""
        self.step("resume_watch")
        start = max(self.checked + 1 - back, self.checked + 1 - len(self.verified))
        missed = [cs for cs in self.verified if cs.revision >= start]

        async def replay() -> None:
            with await self.manager.watch(WatchFilter(), progress_interval=3600.0) as watcher:
                await self.manager.seek(watcher, start)
                for change_set in missed:
                    batch = await next_batch(watcher)
                    assert (batch.revision, [e.change for e in batch.events]) == (
                        change_set.revision,
                        list(change_set.changes),
                    )
                assert watcher.revision == self.checked

        self.run(replay())
        if missed:
            self.saw("a resumed watcher replayed what it missed")

    # -- cancel, delete, waits -----------------------------------------------------------

    @precondition(lambda self: self.ids)
    @rule(
        which=RUN,
        action=st.sampled_from([None, CancelAction.INTERRUPT, CancelAction.ROLLBACK]),
        reason=st.sampled_from([None, "user pressed stop"]),
    )
    def cancel(self, which: int, action: CancelAction | None, reason: str | None) -> None:
        self.step("cancel")
        run_id, run = self.pick(which)
        call = self.manager.cancel_run(run_id, action=action, reason=reason)
        if run is None:
            self.saw("unknown run: not found")
            self.fails(call, RunNotFound)
            return
        outcome = self.run(call)
        if not run.active:
            self.saw("cancel of a finished run")
            assert not outcome.cancelled and outcome.run == run.record
            return
        assert outcome.cancelled
        prev = run.status
        revision = self.next_revision()
        apply_cancel(
            run, action or CancelAction.INTERRUPT, reason or DEFAULT_CANCEL_REASON, revision
        )
        self.adopt(run, outcome.run)
        self.expect(Change(ChangeKind.UPDATED, outcome.run, prev))

    @precondition(lambda self: self.ids)
    @rule(which=RUN, expected=st.sampled_from([None, None, "current", "stale"]))
    def delete(self, which: int, expected: str | None) -> None:
        self.step("delete")
        run_id, run = self.pick(which)
        mod_revision = run.mod_revision if run is not None else 1
        expected_revision = {None: None, "current": mod_revision, "stale": mod_revision - 1}[
            expected
        ]
        call = self.manager.delete_run(run_id, expected_mod_revision=expected_revision)
        if run is None:
            self.saw("unknown run: not found")
            self.fails(call, RunNotFound)
            return
        if expected_revision is not None and expected_revision != run.mod_revision:
            mismatch = self.fails(call, RevisionMismatch)
            assert (mismatch.expected, mismatch.actual) == (expected_revision, run.mod_revision)
            return
        if run.active:
            self.saw("delete refused: active")
            refused = self.fails(call, RunActive)
            assert refused.status == run.status.value
            return
        outcome = self.run(call)
        revision = self.next_revision()
        assert (outcome.run, outcome.revision) == (run.record, revision)
        self.ref.remove(run_id)
        self.saw("delete")
        self.expect(Change(ChangeKind.DELETED, outcome.run, run.status))

    @precondition(lambda self: self.ids and self.waits_started < 8)
    @rule(which=RUN)
    def wait(self, which: int) -> None:
        """A WaitRun that stays: it must answer exactly when its run ends (checked after
        every step)."""
        self.step("wait")
        self.waits_started += 1
        run_id, run = self.pick(which)
        if run is None:
            self.fails(self.manager.wait_run(run_id), RunNotFound)
            return

        async def start() -> asyncio.Task[tuple[Run, bool]]:
            task = asyncio.get_running_loop().create_task(self.manager.wait_run(run_id))
            await asyncio.sleep(0)  # let it start: it registers before it reads the run
            return task

        self.waits.append((run_id, self.run(start())))

    @precondition(lambda self: self.ids)
    @rule(which=RUN)
    def attached_wait_goes_away(self, which: int) -> None:
        """An attached WaitRun whose caller leaves cancels its (active) run."""
        self.step("attached_wait_goes_away")
        run_id, run = self.pick(which)

        async def leave() -> None:
            task = asyncio.get_running_loop().create_task(
                self.manager.wait_run(run_id, attach=True)
            )
            await asyncio.sleep(0)  # the wait has started (and registered)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.manager.wait_detach_cancels()

        self.run(leave())
        if run is None or not run.active:
            return
        record = self.run(self.manager.get_run(run_id))
        prev = run.status
        revision = self.next_revision()
        apply_cancel(run, CancelAction.INTERRUPT, DISCONNECT_REASON, revision)
        self.saw("attached waiter left: run cancelled")
        self.adopt(run, record)
        self.expect(Change(ChangeKind.UPDATED, record, prev))

    # -- time: deadlines, leases, retention ----------------------------------------------

    @rule(minutes=st.sampled_from([1, 10, 30, 90]))
    def advance(self, minutes: int) -> None:
        self.step("advance")
        if self.memory:
            self.fake.now += minutes * MINUTE
        else:
            self.offset += minutes * MINUTE

    def advance_to(self, moment: datetime) -> datetime:
        """Move the program's "now" forward to `moment` exactly (never back); returns it."""
        if self.memory:
            self.fake.now = max(self.fake.now, moment)
            return self.run(self.now())
        real = self.run(self.store.now())
        self.offset = max(self.offset, moment - real)
        return real + self.offset

    # -- the janitor racing writers (every replica runs one): each change happens once --

    @rule(
        first=st.sampled_from(["deadline", "lapse"]),
        race=st.booleans(),
        status=st.sampled_from([RunStatus.SUCCESS, RunStatus.ERROR]),
    )
    def falls_due(self, first: str, race: bool, status: RunStatus) -> None:
        """Time reaches the earliest deadline or lease lapse exactly (`first` when both
        are pending) and the janitor acts on it; with `race`, while a client cancels the
        run (deadline) or its worker finishes it (lapse).

        Not a precondition: which runs are due can depend on how an earlier race went
        (PostgreSQL), and Hypothesis needs a program's choices to be the same on every
        replay; with nothing due it is a no-op step."""
        self.step("falls_due")
        kinds = {"deadline": self.ref.next_deadline(), "lapse": self.ref.next_lapse()}
        pending = [k for k in (first, *kinds) if kinds[k] is not None]
        if not pending:
            self.saw("no-op (nothing due)")
            return
        if pending[0] == "deadline" and race:
            self.race_deadline_and_cancel()
        elif pending[0] == "deadline":
            self.deadline_passes()
        elif race:
            self.race_lapse_and_finish(status)
        else:
            self.worker_dies()

    def earliest(self, due: Callable[[RefRun], datetime | None]) -> RefRun:
        return min(
            (r for r in self.ref.runs.values() if due(r) is not None),
            key=lambda r: (due(r), r.create_revision),
        )

    def race_deadline_and_cancel(self) -> None:
        """A run's deadline passes while a client cancels it: it ends once, either way."""
        run = self.earliest(lambda r: r.deadline if r.active else None)
        assert run.deadline is not None
        now = self.advance_to(run.deadline)
        due = self.ref.deadlines_due(now)
        expired, cancel = self.run(
            _gather(iter([self.store.expire_due(now, 1000), self.manager.cancel_run(run.run_id)]))
        )
        timed_out = {r.run_id: r for r in expired}
        others = {r.run_id for r in due} - {run.run_id}
        assert set(timed_out) - {run.run_id} == others, (timed_out, others)
        if run.run_id in timed_out:  # the deadline came first; the cancel found it ended
            assert not cancel.cancelled and cancel.run == timed_out[run.run_id]
            self.saw("race: the deadline came first")
        else:
            assert cancel.cancelled
            self.saw("race: the cancel came first")
        writes = [(r.mod_revision, r) for r in expired]
        if cancel.cancelled:
            writes.append((cancel.run.mod_revision, cancel.run))
        for _, record in sorted(writes, key=lambda w: w[0]):
            if cancel.cancelled and record is cancel.run:
                prev = run.status
                apply_cancel(
                    run, CancelAction.INTERRUPT, DEFAULT_CANCEL_REASON, self.next_revision()
                )
                self.adopt(run, record)
                self.expect(Change(ChangeKind.UPDATED, record, prev))
            else:
                self.apply_expired([record])

    def race_lapse_and_finish(self, status: RunStatus) -> None:
        """A lease lapses while its worker finishes the run: one of them wins. After the
        lapse the worker's late write is what the rules make of it on the requeued or
        failed run (refused, except an ERROR on a run back in PENDING: legal)."""
        run = self.earliest(lambda r: r.lapse)
        assert run.lapse is not None
        worker = run.worker_id
        error = "boom" if status is RunStatus.ERROR else None
        now = self.advance_to(run.lapse)
        due = {r.run_id for r in self.ref.leases_due(now)}

        async def finish() -> Any:
            try:
                return await self.manager.set_status(
                    run.run_id, status, worker_id=worker, error=error
                )
            except RunControlError as refused:
                return refused

        lapsed, written = self.run(_gather(iter([self.store.expire_leases(now, 1000), finish()])))
        took_back = {r.run_id for r in lapsed}
        assert took_back - {run.run_id} == due - {run.run_id}, (took_back, due)
        if run.run_id in took_back:  # the lapse came first; then the late write
            self.apply_lapsed(lapsed)
            self.saw("race: the lapse came first")
            decision = decide_status(
                run, status, worker, error, None, None, self.ref.queued_behind(run)
            )
            if isinstance(decision, Refused):
                assert isinstance(written, ERRORS[decision.error]), written
                self.check_refusal(written, decision)
                return
            self.saw(f"a lapsed worker's late {status.value} applied to its {run.status.value} run")
            assert isinstance(written, TransitionOutcome), written
            self.check_write(run, written, status, worker, error, None, decision)
            return
        assert isinstance(written, TransitionOutcome), written
        self.saw("race: the worker finished first")
        earlier = [r for r in lapsed if r.mod_revision < written.run.mod_revision]
        self.apply_lapsed(earlier)
        decision = decide_status(run, status, worker, error, None, None, ())
        self.check_write(run, written, status, worker, error, None, decision)
        self.apply_lapsed([r for r in lapsed if r.mod_revision > written.run.mod_revision])

    @rule(thread=st.sampled_from(THREADS))
    def race_retention_and_create(self, thread: str) -> None:
        """Retention deletes a thread's finished runs (and forgets the emptied thread)
        while a run is created on it: both happen, in one order or the other. (Found a
        PostgreSQL bug, fixed: tests/model/test_regressions.py.)"""
        self.step("race_retention_and_create")
        now = self.run(self.now())
        due = self.ref.finished_before(now)
        active = self.ref.active(thread)
        purged, created = self.run(
            _gather(
                iter(
                    [
                        self.store.purge_finished(now, 1000),
                        self.manager.create_run(
                            thread, multitask_strategy=MultitaskStrategy.ENQUEUE
                        ),
                    ]
                )
            )
        )
        self.check_earliest(purged, due, 1000, lambda r: r.updated_at)
        new = created.run
        assert created.queued_behind == tuple(active) and not created.interrupted
        first = new.create_revision == self.ref.revision + 1
        if not first:
            assert new.create_revision == self.ref.revision + len(purged) + 1
            self.apply_purged(purged)
        revision = self.next_revision()
        assert new.create_revision == revision
        run = RefRun(
            new.run_id, thread, MultitaskStrategy.ENQUEUE, None, None, 1, revision, revision
        )
        self.ref.runs[new.run_id] = run
        self.ids.append(new.run_id)
        self.adopt(run, new)
        self.expect(Change(ChangeKind.CREATED, new, None))
        if first:
            self.apply_purged(purged)
        if purged:
            self.saw(f"race: {'the create' if first else 'retention'} came first")

    def worker_dies(self) -> None:
        """Time reaches the earliest lease lapse exactly (its worker stopped renewing)
        and the janitor takes the run back."""
        lapse = self.ref.next_lapse()
        assert lapse is not None
        now = self.advance_to(lapse)
        got = self.run(self.store.expire_leases(now, 1000))
        self.check_earliest(got, self.ref.leases_due(now), 1000, lambda r: r.lapse)
        self.apply_lapsed(got)

    def deadline_passes(self) -> None:
        """Time reaches the earliest deadline exactly and the janitor expires the run."""
        deadline = self.ref.next_deadline()
        assert deadline is not None
        now = self.advance_to(deadline)
        got = self.run(self.store.expire_due(now, 1000))
        self.check_earliest(got, self.ref.deadlines_due(now), 1000, lambda r: r.deadline)
        self.apply_expired(got)

    def check_earliest(
        self,
        got: Sequence[Run],
        due: Sequence[RefRun],
        limit: int,
        key: Callable[[RefRun], datetime | None],
    ) -> None:
        """`got` are up to `limit` of the `due` runs, the earliest (by `key`) first."""
        due_ids = {r.run_id for r in due}
        got_ids = [r.run_id for r in got]
        assert len(got_ids) == min(limit, len(due)), (got_ids, due_ids)
        assert len(set(got_ids)) == len(got_ids) and set(got_ids) <= due_ids, (got_ids, due_ids)
        keys = [key(self.ref.runs[i]) for i in got_ids]
        assert pairwise_ok(keys, lambda a, b: a <= b), keys
        rest = [key(r) for r in due if r.run_id not in got_ids]
        if keys and rest:
            assert max(k for k in keys if k) <= min(k for k in rest if k)

    def apply_expired(self, records: Sequence[Run]) -> None:
        for record in records:
            run = self.ref.runs[record.run_id]
            prev = run.status
            apply_timeout(run, self.next_revision())
            self.saw("deadline timed a run out")
            self.adopt(run, record)
            self.expect(Change(ChangeKind.UPDATED, record, prev))

    def apply_lapsed(self, records: Sequence[Run]) -> None:
        for record in records:
            run = self.ref.runs[record.run_id]
            prev = run.status
            apply_lapse(run, self.next_revision())
            self.saw(f"lapsed lease -> {run.status.value}")
            self.adopt(run, record)
            self.expect(Change(ChangeKind.UPDATED, record, prev))

    def apply_purged(self, records: Sequence[Run]) -> None:
        for record in records:
            self.next_revision()
            run = self.ref.remove(record.run_id)
            assert record == run.record
            self.expect(Change(ChangeKind.DELETED, record, run.status))
            self.saw("retention deleted a run")

    @rule(
        job=st.sampled_from(["deadlines", "leases", "retention", "sweep"]),
        limit=st.sampled_from([1, 1000]),
        retention=st.sampled_from([0, 30, 120]),
    )
    def janitor(self, job: str, limit: int, retention: int) -> None:
        """One of the janitor's jobs at the program's `now`, with a batch `limit`; or a
        whole janitor round (`sweep`) at the store's own time."""
        self.step(f"janitor {job}")
        if job == "sweep":
            self.sweep()
            return
        now = self.run(self.now())
        if job == "deadlines":
            due = self.ref.deadlines_due(now)
            got = self.run(self.store.expire_due(now, limit))
            self.check_earliest(got, due, limit, lambda r: r.deadline)
            self.apply_expired(got)
        elif job == "leases":
            due = self.ref.leases_due(now)
            got = self.run(self.store.expire_leases(now, limit))
            self.check_earliest(got, due, limit, lambda r: r.lapse)
            self.apply_lapsed(got)
        else:
            before = now - retention * MINUTE
            due = self.ref.finished_before(before)
            got = self.run(self.store.purge_finished(before, limit))
            self.check_earliest(got, due, limit, lambda r: r.updated_at)
            self.apply_purged(got)

    def sweep(self) -> None:
        """One janitor round at the store's own time (no offset): deadlines, then
        leases, then retention, each to completion; it answers when the next is due."""
        ref = self.ref

        def due_at(now: datetime) -> tuple[list[RefRun], list[RefRun], list[RefRun]]:
            deadlines = ref.deadlines_due(now)
            leases = [r for r in ref.leases_due(now) if r not in deadlines]
            return deadlines, leases, ref.finished_before(now - RETENTION)

        lower = self.run(self.store.now())
        before_revision = ref.revision
        delay = self.run(self.manager.janitor.sweep())
        upper = self.run(self.store.now())
        deadlines, leases, finished = due_at(lower)
        assert due_at(upper) == (deadlines, leases, finished), "due times fell inside a round"
        made = [cs.changes for cs in self.run(self.store.read_changes(before_revision, 1000))]
        assert all(len(changes) == 1 for changes in made), made
        records = [changes[0].run for changes in made]
        assert len(records) == len(deadlines) + len(leases) + len(finished)
        expired, lapsed, purged = (
            records[: len(deadlines)],
            records[len(deadlines) : len(deadlines) + len(leases)],
            records[len(deadlines) + len(leases) :],
        )
        self.check_earliest(expired, deadlines, 1000, lambda r: r.deadline)
        self.check_earliest(lapsed, leases, 1000, lambda r: r.lapse)
        self.check_earliest(purged, finished, 1000, lambda r: r.updated_at)
        self.apply_expired(expired)
        self.apply_lapsed(lapsed)
        self.apply_purged(purged)
        # Then it sleeps until the earliest of: a deadline, a lapse, a retention's end.
        dues = [ref.next_deadline(), ref.next_lapse()]
        oldest = ref.oldest_finished()
        dues.append(None if oldest is None else oldest + RETENTION)
        next_due = min((d for d in dues if d is not None), default=None)
        if next_due is None:
            assert delay is None
        else:
            assert delay is not None
            assert (
                max(next_due - upper, timedelta(0)) <= delay <= max(next_due - lower, timedelta(0))
            )

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.run(self._check())
        self.ok = True

    async def _check(self) -> None:
        ref, store, manager = self.ref, self.store, self.manager
        # The store's change feed: exactly the predicted change sets, gapless, in order.
        feed = list(await store.read_changes(self.checked, 1000))
        assert [cs.revision for cs in feed] == list(range(self.checked + 1, ref.revision + 1))
        assert feed == self.expected, (feed, self.expected)
        # The watchers: one batch per revision for the unfiltered one; the t1 watcher
        # exactly the events its filter makes of those changes.
        await manager.feed.catch_up(ref.revision)
        for change_set in self.expected:
            batch = await next_batch(self.watch_all)
            assert batch.revision == change_set.revision
            assert [(e.type, e.change) for e in batch.events] == [
                (event_type(c.kind, c.run.status, c.prev_status, ALL_STATUSES), c)
                for c in change_set.changes
            ]
        for change_set in self.expected:
            events = [
                (kind, c)
                for c in change_set.changes
                if c.run.thread_id == "t1"
                and (kind := event_type(c.kind, c.run.status, c.prev_status, T1_ACTIVE.statuses))
            ]
            if events:
                batch = await next_batch(self.watch_t1)
                assert batch.revision == change_set.revision
                assert [(e.type, e.change) for e in batch.events] == events
        self.verified += self.expected
        self.checked, self.expected = ref.revision, []
        # Reads: revision, the whole list newest first, each thread's active runs.
        assert await store.revision() == ref.revision
        page = await manager.list_runs(ListQuery(limit=1000))
        assert page.revision == ref.revision
        assert page.runs == tuple(r.record for r in ref.newest_first())
        assert pairwise_ok(page.runs, lambda a, b: a.created_at >= b.created_at)
        oldest_first = tuple(reversed(page.runs))
        assert await manager.snapshot(None, frozenset()) == (oldest_first, ref.revision)
        t1 = tuple(r for r in oldest_first if r.thread_id == "t1")
        assert await manager.snapshot("t1", frozenset()) == (t1, ref.revision)
        for thread in THREADS:
            inflight = await manager.has_inflight(thread)
            assert inflight.run_ids == tuple(ref.active(thread))
            assert bool(inflight) == bool(ref.active(thread))
        # What the janitor sleeps for.
        assert await store.next_deadline() == ref.next_deadline()
        assert await store.next_lease_lapse() == ref.next_lapse()
        assert await store.oldest_finished_at() == ref.oldest_finished()
        # Waiters: answered exactly when their run has ended, with a terminal record.
        due = [
            task
            for run_id, task in self.waits
            if run_id not in ref.runs or not ref.runs[run_id].active
        ]
        if due:
            await asyncio.wait(due, timeout=READ_TIMEOUT)
        for run_id, task in self.waits:
            run = ref.runs.get(run_id)
            if task in due:
                assert task.done(), f"the wait for {run_id} did not end with its run"
                record, done = task.result()
                assert done and record.run_id == run_id and record.status not in ACTIVE
                assert run is None or record in run.terminal_records, record
                self.saw("wait answered")
            else:
                assert not task.done(), task
        self.waits = [(r, t) for r, t in self.waits if not t.done()]
        if self.memory:
            assert isinstance(store, InMemoryRunStore)
            sizes = store.sizes()
            held = [r for r in ref.runs.values() if r.lease_ttl is not None]
            assert (sizes["runs"], sizes["threads"], sizes["requests"], sizes["leases"]) == (
                len(ref.runs),
                len({r.thread_id for r in ref.runs.values()}),
                len(ref.requests),
                len(held),
            ), sizes

    def teardown(self) -> None:
        try:
            if self.ok:
                self.run(self._nothing_left_for_t1())
        finally:
            self.run(self._close())

    async def _nothing_left_for_t1(self) -> None:
        """The t1 watcher holds no undelivered event: the next one it delivers is a
        marker written now (a watcher that has nothing to deliver cannot be asked)."""
        marker = (
            await self.manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)
        ).run
        await self.manager.feed.catch_up(marker.create_revision)
        batch = await next_batch(self.watch_t1)
        assert batch.revision == marker.create_revision
        assert [(e.type, e.change.run) for e in batch.events] == [(EventType.ADDED, marker)]

    async def _close(self) -> None:
        for _, task in self.waits:
            task.cancel()
        await asyncio.gather(*(task for _, task in self.waits), return_exceptions=True)
        self.watch_all.close()
        self.watch_t1.close()
        await self.manager.wait_detach_cancels()
        await self.manager.feed.stop()


async def _gather(calls: Iterator[Coroutine[Any, Any, Any]]) -> list[Any]:
    return list(await asyncio.gather(*calls))


# --- running it over every store -------------------------------------------------------


def profile() -> tuple[str, settings]:
    if (
        os.environ.get("RUNCONTROL_MODEL_PROFILE") == "thorough"
        or settings.get_current_profile_name() == "thorough"
    ):
        return "thorough", THOROUGH
    return "short", SHORT


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    kind: str = request.param
    loop = asyncio.new_event_loop()
    created = Env(kind, loop)
    try:
        if kind == "postgres":
            url: str = request.getfixturevalue("pg_url")

            async def open_postgres() -> None:
                store = PostgresRunStore(url, pool_size=4)
                await store.open()
                created.pg_store = store
                created.pg_admin = await psycopg.AsyncConnection.connect(url, autocommit=True)

            loop.run_until_complete(open_postgres())
        yield created
    finally:
        if created.pg_admin is not None:
            loop.run_until_complete(created.pg_admin.close())
        if created.pg_store is not None:
            loop.run_until_complete(created.pg_store.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_model(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the machine under the chosen profile and print what it did (also on failure):
    programs, steps, and with the thorough profile the rules and behaviours reached."""
    name, chosen = profile()
    try:
        # A factory is documented (`state_machine_factory`); the stubs say a class.
        factory = lambda: ModelMachine(env)  # noqa: E731
        run_state_machine_as_test(factory, settings=chosen)  # type: ignore[arg-type]
    finally:
        noops = sum(n for behaviour, n in env.seen.items() if behaviour.startswith("no-op"))
        lines = [
            f"model-based test [{env.kind}, profile {name}: max_examples="
            f"{chosen.max_examples}, stateful_step_count={chosen.stateful_step_count}]: "
            f"{env.programs} programs, {env.steps} steps "
            f"({env.steps / max(env.programs, 1):.1f} per program, {noops} of them no-ops)"
        ]
        if name == "thorough":
            lines.append("  rules: " + ", ".join(f"{k} {v}" for k, v in sorted(env.rules.items())))
            lines.append(
                "  behaviours: " + ", ".join(f"{k} {v}" for k, v in sorted(env.seen.items()))
            )
        with capsys.disabled():
            print("\n" + "\n".join(lines))


# Longer than the suite's per-test bound: on a slow runner the short profile's programs
# take tens of seconds, and a divergence must have time to shrink to a short program
# (cut off mid-shrink, Hypothesis can only report a Flaky error, not the program).
@pytest.mark.timeout(300)
@pytest.mark.parametrize("env", ["memory", "postgres"], indirect=True)
def test_the_manager_agrees_with_the_model(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    run_model(env, capsys)


# --- explicit programs: scenarios worth keeping, and the place for regressions -------
# A divergence Hypothesis finds is printed as its shortest program (`state.rule(...)`
# lines); kept here as steps, it runs on every store in every `make test`.

Step = tuple[str, dict[str, Any]]

# A run with two attempts: its worker dies, it goes back to PENDING in its queue place
# (the run queued behind it still waits), the second claim dies too: ERROR "worker lost".
WORKER_DIES_TWICE: list[Step] = [
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.REJECT,
            "request_id": None,
            "timeout": None,
            "max_attempts": 2,
        },
    ),
    ("claim", {"which": 0, "active": False, "worker": "w1", "lease": 5 * MINUTE}),
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.ENQUEUE,
            "request_id": None,
            "timeout": None,
            "max_attempts": 1,
        },
    ),
    ("falls_due", {"first": "lapse", "race": False, "status": RunStatus.SUCCESS}),
    ("claim", {"which": 1, "active": False, "worker": "w2", "lease": None}),
    ("claim", {"which": 0, "active": False, "worker": "w2", "lease": 5 * MINUTE}),
    ("renew", {"which": 0, "worker": "w1"}),
    ("renew", {"which": 0, "worker": "claimer"}),
    ("falls_due", {"first": "lapse", "race": True, "status": RunStatus.SUCCESS}),
    ("claim", {"which": 1, "active": False, "worker": "w2", "lease": None}),
]
# A rolled-back run keeps its worker's note; its request_id replays the first answer
# while the run is kept, and is forgotten with it (then the busy thread refuses).
NOTE_REPLAY_RETENTION: list[Step] = [
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.REJECT,
            "request_id": "req-1",
            "timeout": 20 * MINUTE,
            "max_attempts": 1,
        },
    ),
    ("claim", {"which": 0, "active": False, "worker": "w1", "lease": None}),
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.ROLLBACK,
            "request_id": None,
            "timeout": None,
            "max_attempts": 1,
        },
    ),
    ("worker_finishes", {"which": 0, "status": RunStatus.ERROR, "error": "Rolled back by user"}),
    ("retry_create", {}),
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.REJECT,
            "request_id": "req-1",
            "timeout": 20 * MINUTE,
            "max_attempts": 1,
        },
    ),
    ("advance", {"minutes": 90}),
    ("janitor", {"job": "retention", "limit": 1000, "retention": 60}),
    (
        "create",
        {
            "thread": "t1",
            "strategy": MultitaskStrategy.REJECT,
            "request_id": "req-1",
            "timeout": 20 * MINUTE,
            "max_attempts": 1,
        },
    ),
    ("race_retention_and_create", {"thread": "t1"}),
    ("janitor", {"job": "sweep", "limit": 1000, "retention": 0}),
    ("resume_watch", {"back": 60}),
]


def replay(env: Env, steps: list[Step]) -> None:
    """Run one program step by step, checking the model after each step as Hypothesis
    does, and tear it down the same way."""
    machine = ModelMachine(env)
    try:
        machine.agrees_with_the_model()
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.agrees_with_the_model()
    finally:
        machine.teardown()


PROGRAMS = {
    "worker-dies-twice": (
        WORKER_DIES_TWICE,
        {
            "lapsed lease -> pending",
            "write refused: InvalidTransition (queued)",
            "renewal refused",
            "lease renewed",
            "pending -> running",
        },
    ),
    "note-replay-retention": (
        NOTE_REPLAY_RETENTION,
        {
            "rollback interrupted runs",
            "worker note on a cancelled run",
            "request_id replayed",
            "retention deleted a run",
            "REJECT: thread busy",
            "a resumed watcher replayed what it missed",
        },
    ),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("env", ["memory", "postgres"], indirect=True)
def test_explicit_programs(env: Env, program: str) -> None:
    steps, behaviours = PROGRAMS[program]
    replay(env, steps)
    assert env.steps == len(steps)
    assert behaviours <= set(env.seen), behaviours - set(env.seen)
