"""The contract under concurrent callers: each rule holds when calls really interleave.

On the in-memory store every operation is one event-loop step, so these pin the rules;
on PostgreSQL the calls run on separate connections and interleave inside the database,
which is what they are for. Each test repeats a few rounds on fresh threads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runcontrol_server.domain import (
    AlreadyClaimed,
    InvalidTransition,
    MultitaskStrategy,
    RequestIdReused,
    RevisionMismatch,
    RunManager,
    RunStatus,
    RunStore,
    ThreadBusy,
)

ROUNDS = 5


def _split(results: list[Any]) -> tuple[list[Any], list[BaseException]]:
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return ok, failed


async def test_concurrent_reject_creates_have_exactly_one_winner(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        thread = f"reject-{round_}"
        results = await asyncio.gather(
            *(manager.create_run(thread) for _ in range(32)), return_exceptions=True
        )
        ok, failed = _split(results)
        assert len(ok) == 1
        assert all(isinstance(e, ThreadBusy) for e in failed), failed
        assert (await manager.has_inflight(thread)).run_ids == (ok[0].run.run_id,)


async def test_concurrent_claims_have_exactly_one_winner(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        run = (await manager.create_run(f"claim-{round_}")).run
        results = await asyncio.gather(
            *(
                manager.set_status(run.run_id, RunStatus.RUNNING, worker_id=f"w{i}")
                for i in range(16)
            ),
            return_exceptions=True,
        )
        ok, failed = _split(results)
        assert len(ok) == 1 and ok[0].changed
        assert all(isinstance(e, AlreadyClaimed) for e in failed), failed
        assert (await manager.get_run(run.run_id)).worker_id == ok[0].run.worker_id


async def test_concurrent_enqueues_keep_fifo_claims(manager: RunManager) -> None:
    thread = "fifo"
    first = (await manager.create_run(thread)).run
    queued = await asyncio.gather(
        *(
            manager.create_run(thread, multitask_strategy=MultitaskStrategy.ENQUEUE)
            for _ in range(8)
        )
    )
    runs = sorted((o.run for o in queued), key=lambda r: r.create_revision)
    # Whatever order they committed in, each is queued behind every run created before it.
    for index, outcome in enumerate(sorted(queued, key=lambda o: o.run.create_revision)):
        assert outcome.queued_behind == (first.run_id, *(r.run_id for r in runs[:index]))
    # Only the head of the queue may start, however many claim at once.
    order = [first, *runs]
    for position, run in enumerate(order):
        attempts = await asyncio.gather(
            *(
                manager.set_status(r.run_id, RunStatus.RUNNING, worker_id="w")
                for r in order[position:]
            ),
            return_exceptions=True,
        )
        ok, failed = _split(attempts)
        assert [o.run.run_id for o in ok] == [run.run_id]
        assert all(isinstance(e, InvalidTransition) for e in failed), failed
        await manager.set_status(run.run_id, RunStatus.SUCCESS, worker_id="w")


async def test_concurrent_interrupts_leave_one_active_run(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        thread = f"interrupt-{round_}"
        await manager.create_run(thread)
        outcomes = await asyncio.gather(
            *(
                manager.create_run(thread, multitask_strategy=MultitaskStrategy.INTERRUPT)
                for _ in range(8)
            )
        )
        newest = max(outcomes, key=lambda o: o.run.create_revision).run
        assert (await manager.has_inflight(thread)).run_ids == (newest.run_id,)
        # Every run but the newest was interrupted exactly once.
        interrupted = [r.run_id for o in outcomes for r in o.interrupted]
        assert len(interrupted) == len(set(interrupted)) == 8


async def test_concurrent_retries_of_one_request_id_create_one_run(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        outcomes = await asyncio.gather(
            *(manager.create_run(f"idem-{round_}", request_id=f"r{round_}") for _ in range(8))
        )
        assert len({o.run.run_id for o in outcomes}) == 1
        assert sum(not o.replayed for o in outcomes) == 1


async def test_a_request_id_raced_from_two_threads_has_one_owner(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        results = await asyncio.gather(
            *(
                manager.create_run(f"race-{round_}-{i}", request_id=f"shared-{round_}")
                for i in range(4)
            ),
            return_exceptions=True,
        )
        ok, failed = _split(results)
        assert len(ok) == 1
        assert all(isinstance(e, RequestIdReused) for e in failed), failed


async def test_compare_and_set_lets_one_of_many_through(manager: RunManager) -> None:
    run = (await manager.create_run("cas")).run
    results = await asyncio.gather(
        *(
            manager.set_status(
                run.run_id,
                RunStatus.RUNNING,
                worker_id=f"w{i}",
                expected_mod_revision=run.mod_revision,
            )
            for i in range(8)
        ),
        return_exceptions=True,
    )
    ok, failed = _split(results)
    assert len(ok) == 1
    assert all(isinstance(e, (RevisionMismatch, AlreadyClaimed)) for e in failed), failed


@pytest.mark.parametrize("writers", [16])
async def test_concurrent_writes_take_gapless_revisions(
    manager: RunManager, store: RunStore, writers: int
) -> None:
    before = await manager.revision()

    async def write(i: int) -> None:
        run = (await manager.create_run(f"gapless-{i}")).run
        await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
        await manager.cancel_run(run.run_id)

    await asyncio.gather(*(write(i) for i in range(writers)))
    head = await manager.revision()
    assert head == before + 3 * writers
    change_sets = await store.read_changes(before, 3 * writers)
    assert [c.revision for c in change_sets] == list(range(before + 1, head + 1))


async def test_anonymous_claims_have_exactly_one_winner_too(manager: RunManager) -> None:
    for round_ in range(ROUNDS):
        run = (await manager.create_run(f"anonymous-{round_}")).run
        results = await asyncio.gather(
            *(manager.set_status(run.run_id, RunStatus.RUNNING) for _ in range(8)),
            return_exceptions=True,
        )
        ok, failed = _split(results)
        assert len(ok) == 1 and ok[0].changed
        assert all(isinstance(e, AlreadyClaimed) for e in failed), failed
        # The winner was given a claimer id, and the run can be finished without one.
        claimer = ok[0].run.worker_id
        assert claimer is not None and claimer.startswith("anonymous-")
        done = await manager.set_status(run.run_id, RunStatus.SUCCESS)
        assert done.changed and done.run.worker_id == claimer
