"""The store limits as pure rules (`rules.plan_create`, `rules.check_stored_runs`) and
the bounds' own checks; both stores apply them (tests/contract/test_store_limits.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runcontrol_server.domain import (
    LimitExceeded,
    MultitaskStrategy,
    Run,
    RunDraft,
    RunManager,
    ThreadBusy,
)
from runcontrol_server.domain.limits import StoreLimits
from runcontrol_server.domain.rules import check_stored_runs, new_run, plan_create
from runcontrol_server.stores import InMemoryRunStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = StoreLimits(max_active_runs_per_thread=2, max_stored_runs=3)


def _draft(strategy: MultitaskStrategy) -> RunDraft:
    return RunDraft("new", "t", multitask_strategy=strategy)


def _active(count: int) -> list[Run]:
    return [new_run(RunDraft(f"r{i}", "t"), T0, i + 1) for i in range(count)]


def test_enqueue_is_refused_on_a_thread_at_its_limit() -> None:
    plan = plan_create(_draft(MultitaskStrategy.ENQUEUE), _active(1), LIMITS)
    assert plan.queued_behind == ("r0",)
    with pytest.raises(LimitExceeded) as raised:
        plan_create(_draft(MultitaskStrategy.ENQUEUE), _active(2), LIMITS)
    assert raised.value.limit == "max_active_runs_per_thread"
    assert raised.value.field is None


@pytest.mark.parametrize(
    "strategy", [MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK], ids=str
)
def test_interrupting_strategies_are_never_refused_for_the_limit(
    strategy: MultitaskStrategy,
) -> None:
    assert len(plan_create(_draft(strategy), _active(5), LIMITS).interrupt) == 5


def test_reject_on_a_busy_thread_stays_thread_busy() -> None:
    with pytest.raises(ThreadBusy):
        plan_create(_draft(MultitaskStrategy.REJECT), _active(2), LIMITS)


def test_stored_runs() -> None:
    check_stored_runs(2, LIMITS)
    with pytest.raises(LimitExceeded) as raised:
        check_stored_runs(3, LIMITS)
    assert raised.value.limit == "max_stored_runs"
    assert "holds 3 runs (the limit is 3)" in str(raised.value)


@pytest.mark.parametrize(
    "fields", [{"max_active_runs_per_thread": 0}, {"max_stored_runs": 0}], ids=str
)
def test_store_limits_are_at_least_one(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StoreLimits(**fields)


def test_max_waiters_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_waiters"):
        RunManager(InMemoryRunStore(), max_waiters=0)
