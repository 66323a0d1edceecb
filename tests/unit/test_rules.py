"""The status machine and strategy rules, pair by pair (pure functions, no store)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from runcontrol_server.domain import (
    AlreadyClaimed,
    CancelAction,
    InvalidTransition,
    MultitaskStrategy,
    RevisionMismatch,
    Run,
    RunDraft,
    RunStatus,
    StatusChange,
    ThreadBusy,
)
from runcontrol_server.domain.rules import (
    TRANSITIONS,
    apply_timeout,
    apply_transition,
    can_move,
    check_transition,
    new_run,
    plan_create,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ALLOWED = {
    (RunStatus.PENDING, RunStatus.RUNNING),
    (RunStatus.PENDING, RunStatus.INTERRUPTED),
    (RunStatus.PENDING, RunStatus.ERROR),
    (RunStatus.PENDING, RunStatus.TIMEOUT),
    (RunStatus.RUNNING, RunStatus.SUCCESS),
    (RunStatus.RUNNING, RunStatus.ERROR),
    (RunStatus.RUNNING, RunStatus.TIMEOUT),
    (RunStatus.RUNNING, RunStatus.INTERRUPTED),
}


def make_run(status: RunStatus = RunStatus.PENDING, **fields: object) -> Run:
    run = new_run(RunDraft(run_id="r1", thread_id="t1"), T0, 1)
    return run._replace(status=status, **fields)


def test_table_is_exactly_the_contract() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(RunStatus)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(RunStatus, RunStatus)))
def test_every_pair(src: RunStatus, dst: RunStatus) -> None:
    # Worker ids only on RUNNING, as a claim would have left them.
    run = make_run(src, worker_id="w" if src is not RunStatus.PENDING else None)
    change = StatusChange("r1", dst, worker_id="w" if dst is RunStatus.RUNNING else None)
    if (src, dst) in ALLOWED:
        assert can_move(src, dst)
        assert check_transition(run, change, []) is True
        moved = apply_transition(run, change, T0 + timedelta(seconds=1), 2)
        assert (moved.status, moved.mod_revision, moved.create_revision) == (dst, 2, 1)
        assert moved.updated_at > moved.created_at
    elif src is dst and src is not RunStatus.PENDING:
        assert check_transition(run, change, []) is False  # idempotent repeat
    else:
        assert not can_move(src, dst)
        with pytest.raises(InvalidTransition) as info:
            check_transition(run, change, [])
        assert (info.value.from_status, info.value.to_status) == (src.value, dst.value)


def test_claim_records_worker_and_second_worker_is_refused() -> None:
    run = make_run()
    claimed = apply_transition(run, StatusChange("r1", RunStatus.RUNNING, worker_id="a"), T0, 2)
    assert claimed.worker_id == "a"
    assert (
        check_transition(claimed, StatusChange("r1", RunStatus.RUNNING, worker_id="a"), []) is False
    )
    for other in ("b", None):
        with pytest.raises(AlreadyClaimed) as info:
            check_transition(claimed, StatusChange("r1", RunStatus.RUNNING, worker_id=other), [])
        assert info.value.worker_id == "a"
    # Finishing: the claimer or an anonymous caller may; another named worker may not.
    assert check_transition(claimed, StatusChange("r1", RunStatus.SUCCESS, worker_id="a"), [])
    assert check_transition(claimed, StatusChange("r1", RunStatus.SUCCESS), [])
    with pytest.raises(AlreadyClaimed):
        check_transition(claimed, StatusChange("r1", RunStatus.SUCCESS, worker_id="b"), [])


def test_repeat_needs_same_error_and_worker() -> None:
    failed = make_run(RunStatus.ERROR, error="boom", worker_id="a")
    assert check_transition(failed, StatusChange("r1", RunStatus.ERROR, error="boom"), []) is False
    assert not check_transition(
        failed, StatusChange("r1", RunStatus.ERROR, error="boom", worker_id="a"), []
    )
    with pytest.raises(InvalidTransition):
        check_transition(failed, StatusChange("r1", RunStatus.ERROR, error="other"), [])
    with pytest.raises(InvalidTransition):
        check_transition(
            failed, StatusChange("r1", RunStatus.ERROR, error="boom", worker_id="b"), []
        )


def test_expected_mod_revision_is_checked_after_the_repeat_check() -> None:
    run = make_run(RunStatus.RUNNING, worker_id="a")._replace(mod_revision=5)
    with pytest.raises(RevisionMismatch) as info:
        check_transition(run, StatusChange("r1", RunStatus.SUCCESS, expected_mod_revision=4), [])
    assert (info.value.expected, info.value.actual) == (4, 5)
    assert check_transition(run, StatusChange("r1", RunStatus.SUCCESS, expected_mod_revision=5), [])
    # A retry of a claim that already happened succeeds even though the revision moved on.
    repeat = StatusChange("r1", RunStatus.RUNNING, worker_id="a", expected_mod_revision=1)
    assert check_transition(run, repeat, []) is False


def test_claim_behind_earlier_active_runs_is_refused() -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(make_run(), StatusChange("r1", RunStatus.RUNNING), ["r0"])
    assert info.value.queued_behind == ("r0",)
    # Other moves of a queued run are allowed (it can be cancelled or fail while waiting).
    assert check_transition(make_run(), StatusChange("r1", RunStatus.ERROR, error="x"), ["r0"])


def test_error_is_kept_and_timeout_sets_one() -> None:
    run = make_run(RunStatus.RUNNING, error=None)
    timed_out = apply_timeout(run, T0, 3)
    assert (timed_out.status, timed_out.error, timed_out.mod_revision) == (
        RunStatus.TIMEOUT,
        "deadline exceeded",
        3,
    )


def test_anonymous_run_finished_by_named_worker_records_it() -> None:
    run = make_run(RunStatus.RUNNING)
    done = apply_transition(run, StatusChange("r1", RunStatus.SUCCESS, worker_id="late"), T0, 2)
    assert done.worker_id == "late"


@pytest.mark.parametrize("strategy", list(MultitaskStrategy))
def test_plan_create_on_idle_thread_does_nothing(strategy: MultitaskStrategy) -> None:
    plan = plan_create(RunDraft("new", "t1", multitask_strategy=strategy), [])
    assert (plan.interrupt, plan.queued_behind) == ((), ())


def test_plan_create_on_busy_thread() -> None:
    active = [make_run(), make_run(RunStatus.RUNNING)._replace(run_id="r2")]
    with pytest.raises(ThreadBusy) as info:
        plan_create(RunDraft("new", "t1"), active)
    assert info.value.inflight_run_ids == ("r1", "r2")
    interrupt = plan_create(
        RunDraft("n", "t1", multitask_strategy=MultitaskStrategy.INTERRUPT), active
    )
    assert (interrupt.interrupt, interrupt.cancel_action) == (tuple(active), CancelAction.INTERRUPT)
    rollback = plan_create(
        RunDraft("n", "t1", multitask_strategy=MultitaskStrategy.ROLLBACK), active
    )
    assert rollback.cancel_action is CancelAction.ROLLBACK
    enqueue = plan_create(RunDraft("n", "t1", multitask_strategy=MultitaskStrategy.ENQUEUE), active)
    assert (enqueue.interrupt, enqueue.queued_behind) == ((), ("r1", "r2"))


def test_new_run_applies_defaults_and_deadline() -> None:
    run = new_run(RunDraft("r", "t", timeout=timedelta(seconds=30)), T0, 7)
    assert run.deadline == T0 + timedelta(seconds=30)
    assert (run.status, run.create_revision, run.mod_revision) == (RunStatus.PENDING, 7, 7)
    assert run.cancel_action is CancelAction.INTERRUPT
    assert run.cancel_reason is None
