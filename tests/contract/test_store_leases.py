"""The store contract for worker leases: claim with a lease, renew, lapse.

Lapse times are passed in explicitly (`expire_leases(now)`), so these tests never
sleep and hold for every store whatever its clock.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from runcontrol_server.domain import (
    ChangeKind,
    InvalidTransition,
    LeaseNotHeld,
    MultitaskStrategy,
    RunManager,
    RunNotFound,
    RunStatus,
    RunStore,
)

US = timedelta(microseconds=1)
TTL = timedelta(seconds=30)


async def _claimed(manager: RunManager, thread_id: str, *, max_attempts: int = 1) -> str:
    run = (await manager.create_run(thread_id, max_attempts=max_attempts)).run
    await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w1", lease_ttl=TTL)
    return run.run_id


async def test_a_claim_with_a_lease_records_it_and_counts_the_attempt(
    manager: RunManager, store: RunStore
) -> None:
    created = (await manager.create_run("t1", max_attempts=3)).run
    assert (created.attempt, created.max_attempts, created.lease_ttl) == (0, 3, None)
    claimed = (
        await manager.set_status(created.run_id, RunStatus.RUNNING, worker_id="w", lease_ttl=TTL)
    ).run
    assert (claimed.attempt, claimed.max_attempts, claimed.lease_ttl) == (1, 3, TTL)
    assert await store.next_lease_lapse() == claimed.updated_at + TTL
    assert await manager.get_run(created.run_id) == claimed
    # A claim without a lease holds none.
    plain = (await manager.create_run("t2")).run
    await manager.set_status(plain.run_id, RunStatus.RUNNING, worker_id="w")
    assert (await manager.get_run(plain.run_id)).lease_ttl is None
    assert await store.next_lease_lapse() == claimed.updated_at + TTL


async def test_renewal_moves_the_lapse_without_a_revision(
    manager: RunManager, store: RunStore
) -> None:
    run_id = await _claimed(manager, "t1")
    first = await store.next_lease_lapse()
    assert first is not None
    revision = await store.revision()
    run, lapse = await manager.renew_lease(run_id, "w1")
    assert run == await manager.get_run(run_id)  # unchanged record
    assert lapse >= first
    assert await store.next_lease_lapse() == lapse
    assert await store.revision() == revision  # no revision, no change set
    assert await store.read_changes(revision, 10) == []
    # The lease lapses at the renewed time, not before.
    assert await store.expire_leases(lapse - US, 10) == []
    assert [r.run_id for r in await store.expire_leases(lapse, 10)] == [run_id]


async def test_a_lapsed_lease_ends_the_run_error_worker_lost_when_no_attempt_is_left(
    manager: RunManager, store: RunStore
) -> None:
    run_id = await _claimed(manager, "t1")
    lapse = await store.next_lease_lapse()
    assert lapse is not None
    before = await store.revision()
    assert await store.expire_leases(lapse - US, 10) == []
    (lost,) = await store.expire_leases(lapse, 10)
    assert (lost.run_id, lost.status) == (run_id, RunStatus.ERROR)
    assert lost.error is not None and lost.error.startswith("worker lost")
    assert "w1" in lost.error
    assert (lost.worker_id, lost.attempt, lost.lease_ttl) == ("w1", 1, None)
    assert lost.mod_revision == before + 1
    (change_set,) = await store.read_changes(before, 10)
    assert [(c.kind, c.run, c.prev_status) for c in change_set.changes] == [
        (ChangeKind.UPDATED, lost, RunStatus.RUNNING)
    ]
    assert await store.next_lease_lapse() is None
    assert await store.expire_leases(lapse + timedelta(hours=1), 10) == []
    assert (await manager.has_inflight("t1")).run_ids == ()


async def test_a_lapsed_lease_returns_the_run_to_pending_while_attempts_remain(
    manager: RunManager, store: RunStore
) -> None:
    run_id = await _claimed(manager, "t1", max_attempts=2)
    lapse = await store.next_lease_lapse()
    assert lapse is not None
    (requeued,) = await store.expire_leases(lapse, 10)
    assert requeued.status is RunStatus.PENDING
    assert (requeued.worker_id, requeued.attempt, requeued.lease_ttl) == (None, 1, None)
    assert requeued.error is None
    assert (await manager.has_inflight("t1")).run_ids == (run_id,)
    # The old worker's lease is gone; its late writes find the run no longer its own.
    with pytest.raises(LeaseNotHeld):
        await manager.renew_lease(run_id, "w1")
    # Another worker claims it: the second and last attempt.
    again = (await manager.set_status(run_id, RunStatus.RUNNING, worker_id="w2", lease_ttl=TTL)).run
    assert (again.worker_id, again.attempt) == ("w2", 2)
    lapse = await store.next_lease_lapse()
    assert lapse is not None
    (lost,) = await store.expire_leases(lapse, 10)
    assert lost.status is RunStatus.ERROR
    assert lost.error is not None and "attempt 2 of 2" in lost.error


async def test_a_requeued_run_keeps_its_place_in_the_thread_queue(
    manager: RunManager, store: RunStore
) -> None:
    first = await _claimed(manager, "t1", max_attempts=2)
    second = (
        await manager.create_run("t1", multitask_strategy=MultitaskStrategy.ENQUEUE)
    ).run.run_id
    lapse = await store.next_lease_lapse()
    assert lapse is not None
    await store.expire_leases(lapse, 10)
    assert (await manager.has_inflight("t1")).run_ids == (first, second)
    with pytest.raises(InvalidTransition):
        await manager.set_status(second, RunStatus.RUNNING, worker_id="w2")
    await manager.set_status(first, RunStatus.RUNNING, worker_id="w2")


async def test_leases_end_with_the_claim(manager: RunManager, store: RunStore) -> None:
    finished = await _claimed(manager, "t1")
    cancelled = await _claimed(manager, "t2")
    await manager.set_status(finished, RunStatus.SUCCESS, worker_id="w1")
    assert (await manager.get_run(finished)).lease_ttl is None
    await manager.cancel_run(cancelled)
    assert (await manager.get_run(cancelled)).lease_ttl is None
    assert await store.next_lease_lapse() is None
    assert await store.expire_leases((await store.now()) + timedelta(days=1), 10) == []
    with pytest.raises(LeaseNotHeld) as info:
        await manager.renew_lease(cancelled, "w1")
    assert info.value.status is RunStatus.INTERRUPTED


async def test_renewal_is_refused_unless_the_caller_holds_the_lease(
    manager: RunManager, store: RunStore
) -> None:
    leased = await _claimed(manager, "t1")
    with pytest.raises(LeaseNotHeld) as info:
        await manager.renew_lease(leased, "someone-else")
    assert (info.value.status, info.value.worker_id) == (RunStatus.RUNNING, "w1")
    plain = (await manager.create_run("t2")).run.run_id
    with pytest.raises(LeaseNotHeld):
        await manager.renew_lease(plain, "w1")  # pending: nobody holds it
    await manager.set_status(plain, RunStatus.RUNNING, worker_id="w1")
    with pytest.raises(LeaseNotHeld):
        await manager.renew_lease(plain, "w1")  # claimed without a lease
    with pytest.raises(RunNotFound):
        await manager.renew_lease("no-such-run", "w1")


async def test_expire_leases_respects_its_limit(manager: RunManager, store: RunStore) -> None:
    for i in range(5):
        await _claimed(manager, f"t{i}")
    now = (await store.now()) + TTL + timedelta(seconds=1)
    first = await store.expire_leases(now, 2)
    rest = await store.expire_leases(now, 100)
    assert (len(first), len(rest)) == (2, 3)
    assert await store.expire_leases(now, 100) == []


async def test_a_lapsed_worker_s_late_write_cannot_end_the_requeued_run(
    manager: RunManager, store: RunStore
) -> None:
    run_id = await _claimed(manager, "t1", max_attempts=2)
    lapse = await store.next_lease_lapse()
    assert lapse is not None
    (requeued,) = await store.expire_leases(lapse, 10)
    revision = await store.revision()
    with pytest.raises(LeaseNotHeld) as refused:
        await manager.set_status(run_id, RunStatus.ERROR, error="late", worker_id="w1")
    assert (refused.value.status, refused.value.worker_id) == (RunStatus.PENDING, None)
    assert await manager.get_run(run_id) == requeued  # the next attempt still waits
    assert await store.revision() == revision
    # A claim (by anyone, the old worker included) is still taken.
    again = await manager.set_status(run_id, RunStatus.RUNNING, worker_id="w1", lease_ttl=TTL)
    assert (again.run.status, again.run.attempt) == (RunStatus.RUNNING, 2)


async def test_a_repeated_claim_is_a_repeat_only_with_the_same_lease(
    manager: RunManager, store: RunStore
) -> None:
    run_id = await _claimed(manager, "t1")
    repeat = await manager.set_status(run_id, RunStatus.RUNNING, worker_id="w1", lease_ttl=TTL)
    assert not repeat.changed
    for other in (None, TTL * 2):
        with pytest.raises(InvalidTransition):
            await manager.set_status(run_id, RunStatus.RUNNING, worker_id="w1", lease_ttl=other)
    assert (await manager.get_run(run_id)).lease_ttl == TTL
