"""Model-based test: the manager over the in-memory store against a tiny reference model.

Hypothesis drives random sequences of creates, transitions, cancels and deletes; after
every step the store must agree with the model on every run's status, the per-thread
active queue, and the revision counter.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runcontrol_server.domain import (
    AlreadyClaimed,
    InvalidTransition,
    ListQuery,
    MultitaskStrategy,
    RunActive,
    RunControlError,
    RunManager,
    RunStatus,
    ThreadBusy,
)
from runcontrol_server.stores import InMemoryRunStore

ACTIVE = {RunStatus.PENDING, RunStatus.RUNNING}
LEGAL = {
    RunStatus.PENDING: {
        RunStatus.RUNNING,
        RunStatus.INTERRUPTED,
        RunStatus.ERROR,
        RunStatus.TIMEOUT,
    },
    RunStatus.RUNNING: {
        RunStatus.SUCCESS,
        RunStatus.ERROR,
        RunStatus.TIMEOUT,
        RunStatus.INTERRUPTED,
    },
}
THREADS = st.sampled_from(["t1", "t2", "t3"])
WORKERS = st.sampled_from(["w1", "w2"])


@dataclass
class ModelRun:
    thread: str
    status: RunStatus
    order: int
    worker: str | None = None


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # Deterministic ids: Hypothesis replays draw choices, so run ids must repeat.
        ids = (f"run-{i:04d}" for i in itertools.count())
        self.manager = RunManager(InMemoryRunStore(), new_id=lambda: next(ids))
        self.model: dict[str, ModelRun] = {}
        self.revision = 0
        self.order = 0

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def active(self, thread: str) -> list[str]:
        runs = [
            (m.order, rid)
            for rid, m in self.model.items()
            if m.thread == thread and m.status in ACTIVE
        ]
        return [rid for _, rid in sorted(runs)]

    @rule(thread=THREADS, strategy=st.sampled_from(list(MultitaskStrategy)))
    def create(self, thread: str, strategy: MultitaskStrategy) -> None:
        active = self.active(thread)
        if strategy is MultitaskStrategy.REJECT and active:
            try:
                self.run(self.manager.create_run(thread, multitask_strategy=strategy))
            except ThreadBusy as busy:
                assert list(busy.inflight_run_ids) == active
                return
            raise AssertionError("REJECT on a busy thread succeeded")
        outcome = self.run(self.manager.create_run(thread, multitask_strategy=strategy))
        self.revision += 1
        if strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK):
            assert [r.run_id for r in outcome.interrupted] == active
            for rid in active:
                self.model[rid].status = RunStatus.INTERRUPTED
        else:
            assert outcome.interrupted == ()
        self.order += 1
        self.model[outcome.run.run_id] = ModelRun(thread, RunStatus.PENDING, self.order)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), status=st.sampled_from(list(RunStatus)), worker=st.none() | WORKERS)
    def set_status(self, data: st.DataObject, status: RunStatus, worker: str | None) -> None:
        rid = data.draw(st.sampled_from(sorted(self.model)))
        m = self.model[rid]
        try:
            outcome = self.run(self.manager.set_status(rid, status, worker_id=worker))
        except AlreadyClaimed:
            assert m.status is RunStatus.RUNNING and worker != m.worker
            return
        except InvalidTransition:
            earlier = self.active(m.thread)
            earlier = earlier[: earlier.index(rid)] if rid in earlier else earlier
            assert status not in LEGAL.get(m.status, set()) or (
                status is RunStatus.RUNNING and earlier
            ), (m, status)
            return
        if not outcome.changed:
            assert m.status is status
            return
        assert status in LEGAL[m.status]
        if status is RunStatus.RUNNING and worker is None:
            # An anonymous claim is given a claimer id of its own.
            worker = outcome.run.worker_id
            assert worker is not None and worker.startswith("anonymous-")
        if status is RunStatus.RUNNING or (m.worker is None and worker is not None):
            m.worker = worker
        m.status = status
        self.revision += 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.model)))
        outcome = self.run(self.manager.cancel_run(rid))
        assert outcome.cancelled == (self.model[rid].status in ACTIVE)
        if outcome.cancelled:
            self.model[rid].status = RunStatus.INTERRUPTED
            self.revision += 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.model)))
        try:
            self.run(self.manager.delete_run(rid))
        except RunActive:
            assert self.model[rid].status in ACTIVE
            return
        assert self.model.pop(rid).status not in ACTIVE
        self.revision += 1

    @invariant()
    def store_matches_model(self) -> None:
        assert self.run(self.manager.revision()) == self.revision
        page = self.run(self.manager.list_runs(ListQuery(limit=1000)))
        assert {r.run_id: r.status for r in page.runs} == {
            k: m.status for k, m in self.model.items()
        }
        assert [r.run_id for r in page.runs] == sorted(
            self.model, key=lambda k: -self.model[k].order
        )
        for thread in ("t1", "t2", "t3"):
            assert list(self.run(self.manager.has_inflight(thread)).run_ids) == self.active(thread)
        for run in page.runs:
            assert run.worker_id == self.model[run.run_id].worker

    @invariant()
    def unknown_runs_stay_unknown(self) -> None:
        try:
            self.run(self.manager.get_run("never-created"))
        except RunControlError:
            return
        raise AssertionError("unknown run was found")


ManagerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestManagerModel = ManagerMachine.TestCase
