"""Deadlines (TIMEOUT) and retention (DELETED): one janitor task, bounded memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from _streams import until
from google.protobuf.duration_pb2 import Duration

from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.app import build_manager
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.domain import (
    Change,
    ChangeKind,
    ChangeSet,
    MonotonicClock,
    RunManager,
    RunStatus,
)
from runcontrol_server.domain.errors import StoreUnavailable
from runcontrol_server.domain.feed import FeedCache
from runcontrol_server.domain.janitor import Janitor
from runcontrol_server.domain.model import Run
from runcontrol_server.stores.memory import InMemoryRunStore

SETTLE_TIMEOUT = 20.0


class FakeTime:
    """A settable clock source for stores, so hours pass without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def changes_of(manager: RunManager, since: int) -> list[Change]:
    return [change for cs in manager.feed.history.since(since) for change in cs.changes]


def on_change(manager: RunManager, match: Callable[[Change], bool]) -> asyncio.Event:
    """An event set by the first change that matches (listeners see every change)."""
    seen = asyncio.Event()

    def listener(change_set: ChangeSet) -> None:
        if any(match(change) for change in change_set.changes):
            seen.set()

    manager.feed.history.add_listener(listener)
    return seen


# --- deadlines over the wire ---------------------------------------------------------


async def test_a_run_past_its_deadline_becomes_timeout_with_its_event() -> None:
    async with serve_in_process() as server:
        created = await server.stub.CreateRun(
            pb.CreateRunRequest(thread_id="t1", timeout=Duration(nanos=50_000_000))
        )
        run = created.run
        assert run.HasField("deadline")
        waited = await server.stub.WaitRun(
            pb.WaitRunRequest(run_id=run.run_id, timeout=Duration(seconds=10)), timeout=20
        )
        assert waited.done
        assert waited.run.status == run_pb2.RUN_STATUS_TIMEOUT
        assert waited.run.deadline == run.deadline
        assert waited.run.updated_at.ToDatetime() >= run.deadline.ToDatetime()
        (change,) = changes_of(server.manager, run.create_revision + 1)
        assert (change.kind, change.run.status, change.prev_status) == (
            ChangeKind.UPDATED,
            RunStatus.TIMEOUT,
            RunStatus.PENDING,
        )
        assert change.run.mod_revision == waited.run.mod_revision
        # The thread is free again.
        inflight = await server.stub.HasInflight(pb.HasInflightRequest(thread_id="t1"))
        assert not inflight.has_inflight


async def test_a_run_finished_before_its_deadline_is_untouched() -> None:
    async with serve_in_process() as server:
        stub = server.stub
        early = (
            await stub.CreateRun(
                pb.CreateRunRequest(thread_id="t1", timeout=Duration(nanos=50_000_000))
            )
        ).run
        done = await stub.SetRunStatus(
            pb.SetRunStatusRequest(
                run_id=early.run_id, status=run_pb2.RUN_STATUS_ERROR, error="failed fast"
            )
        )
        # A later deadline on another run: once it has fired, the first one has passed too.
        marker = (
            await stub.CreateRun(
                pb.CreateRunRequest(thread_id="t2", timeout=Duration(nanos=100_000_000))
            )
        ).run
        waited = await stub.WaitRun(
            pb.WaitRunRequest(run_id=marker.run_id, timeout=Duration(seconds=10)), timeout=20
        )
        assert waited.run.status == run_pb2.RUN_STATUS_TIMEOUT
        got = await stub.GetRun(pb.GetRunRequest(run_id=early.run_id))
        assert got.run == done.run
        assert got.run.error == "failed fast"


# --- retention ----------------------------------------------------------------------


async def test_retention_deletes_finished_runs_and_frees_their_request_id() -> None:
    store = InMemoryRunStore()
    manager = RunManager(store, retention=timedelta(milliseconds=100))
    deleted = on_change(manager, lambda c: c.kind is ChangeKind.DELETED)
    async with serve_in_process(manager=manager) as server:
        stub = server.stub
        first = (await stub.CreateRun(pb.CreateRunRequest(thread_id="t1", request_id="r1"))).run
        kept = (await stub.CreateRun(pb.CreateRunRequest(thread_id="t2"))).run  # stays active
        await stub.CancelRun(pb.CancelRunRequest(run_id=first.run_id))
        await asyncio.wait_for(deleted.wait(), SETTLE_TIMEOUT)

        (change,) = [c for c in changes_of(manager, 1) if c.kind is ChangeKind.DELETED]
        assert change.run.run_id == first.run_id
        assert change.prev_status is RunStatus.INTERRUPTED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRun(pb.GetRunRequest(run_id=first.run_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # The request_id died with its run: the same request now creates a new run.
        again = await stub.CreateRun(pb.CreateRunRequest(thread_id="t1", request_id="r1"))
        assert not again.replayed
        assert again.run.run_id != first.run_id
        got = await stub.GetRun(pb.GetRunRequest(run_id=kept.run_id))
        assert got.run.status == run_pb2.RUN_STATUS_PENDING


async def test_default_retention_is_300_seconds() -> None:
    clock = FakeTime()
    store = InMemoryRunStore(clock=MonotonicClock(clock))
    manager = RunManager(store)
    assert manager.janitor.retention == timedelta(seconds=300)
    run = (await manager.create_run("t1", request_id="r1")).run
    await manager.cancel_run(run.run_id)

    clock.now += timedelta(seconds=299)
    assert await manager.janitor.sweep() == timedelta(seconds=1)
    assert (await manager.get_run(run.run_id)).status is RunStatus.INTERRUPTED
    clock.now += timedelta(seconds=1)
    assert await manager.janitor.sweep() is None  # nothing pending any more
    assert store.sizes()["runs"] == store.sizes()["requests"] == 0


@pytest.mark.parametrize("manager_retention", ["none", "settings-zero"])
async def test_no_retention_keeps_finished_runs_forever(manager_retention: str) -> None:
    clock = FakeTime()
    store = InMemoryRunStore(clock=MonotonicClock(clock))
    if manager_retention == "none":
        manager = RunManager(store, retention=None)
    else:
        settings = parse_settings(["--retention", "0"], {})
        retention = build_manager(settings).janitor.retention
        assert (settings.retention, retention) == (0, None)
        manager = RunManager(store, retention=retention)
    run = (await manager.create_run("t1")).run
    done = (await manager.cancel_run(run.run_id)).run
    clock.now += timedelta(days=3650)
    assert await manager.janitor.sweep() is None
    assert await manager.get_run(run.run_id) == done


def test_retention_setting_bounds() -> None:
    assert Settings().retention == 300.0
    assert parse_settings([], {"RUNCONTROL_RETENTION": "1.5"}).retention == 1.5
    for bad in ("-1", "nan", "inf", "1e12"):
        with pytest.raises(SystemExit):
            parse_settings(["--retention", bad], {})


# --- the janitor ---------------------------------------------------------------------


async def test_sweep_reports_the_next_due_time() -> None:
    clock = FakeTime()
    store = InMemoryRunStore(clock=MonotonicClock(clock))
    manager = RunManager(store, retention=timedelta(seconds=60))
    janitor = manager.janitor
    assert await janitor.sweep() is None
    await manager.create_run("t1", run_timeout=timedelta(seconds=30))
    assert await janitor.sweep() == timedelta(seconds=30)
    finished = (await manager.create_run("t2")).run
    await manager.cancel_run(finished.run_id)
    clock.now += timedelta(seconds=10)
    assert await janitor.sweep() == timedelta(seconds=20)  # the deadline comes first
    clock.now += timedelta(seconds=20)
    assert await janitor.sweep() == timedelta(seconds=30)  # expired; now the purge
    assert store.sizes()["deadlines"] == 0


async def test_sweep_ends_lapsed_leases_and_reports_the_next_lapse() -> None:
    clock = FakeTime()
    store = InMemoryRunStore(clock=MonotonicClock(clock))
    manager = RunManager(store, retention=None)
    janitor = manager.janitor
    lost = (await manager.create_run("t1")).run.run_id
    again = (await manager.create_run("t2", max_attempts=2)).run.run_id
    await manager.set_status(
        lost, RunStatus.RUNNING, worker_id="w1", lease_ttl=timedelta(seconds=30)
    )
    clock.now += timedelta(seconds=10)
    await manager.set_status(
        again, RunStatus.RUNNING, worker_id="w2", lease_ttl=timedelta(seconds=30)
    )
    assert await janitor.sweep() == timedelta(seconds=20)  # the first lease lapses first
    clock.now += timedelta(seconds=5)
    await manager.renew_lease(lost, "w1")  # lapses 30 s from now instead
    assert await janitor.sweep() == timedelta(seconds=25)  # now the second one is first
    clock.now += timedelta(seconds=25)
    assert await janitor.sweep() == timedelta(seconds=5)
    assert (await manager.get_run(again)).status is RunStatus.PENDING  # an attempt is left
    assert (await manager.get_run(lost)).status is RunStatus.RUNNING
    clock.now += timedelta(seconds=5)
    assert await janitor.sweep() is None  # nothing pending any more
    ended = await manager.get_run(lost)
    assert ended.status is RunStatus.ERROR
    assert ended.error == "worker lost: the lease of worker 'w1' lapsed (attempt 1 of 1)"
    assert store.sizes()["leases"] == store.sizes()["lease_heap"] == 0


async def test_a_claim_with_an_earlier_lapse_wakes_the_sleeping_janitor() -> None:
    store = InMemoryRunStore()
    # An idle janitor would sleep an hour: only the claim's poke can wake it in time.
    manager = RunManager(store, retention=None, prune_interval=timedelta(hours=1))
    await manager.start()
    try:
        run_id = (await manager.create_run("t1", max_attempts=2)).run.run_id
        requeued = on_change(
            manager,
            lambda c: c.run.status is RunStatus.PENDING and c.prev_status is RunStatus.RUNNING,
        )
        await manager.set_status(
            run_id, RunStatus.RUNNING, worker_id="w", lease_ttl=timedelta(seconds=1)
        )
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await requeued.wait()
        assert (await manager.get_run(run_id)).worker_id is None
    finally:
        await manager.close()


async def test_a_busy_store_does_not_wake_the_janitor_per_change() -> None:
    store = InMemoryRunStore()
    # Retention 300 s, and no periodic round for an hour: nothing falls due in this test.
    manager = RunManager(store, prune_interval=timedelta(hours=1))
    await manager.start()
    try:
        await until(lambda: manager.janitor.rounds >= 1, "the first round ran")
        rounds = manager.janitor.rounds
        for i in range(1000):
            run = (await manager.create_run(f"t{i}", run_timeout=timedelta(hours=1))).run
            await manager.set_status(run.run_id, RunStatus.ERROR)
            await asyncio.sleep(0)  # give the janitor every chance to run
        # The first finish brings the next due time (its purge) forward: one wake-up.
        # Every later change falls due after it, so wakes nobody.
        assert manager.janitor.rounds - rounds <= 1
    finally:
        await manager.close()


async def test_an_earlier_deadline_wakes_the_sleeping_janitor() -> None:
    store = InMemoryRunStore()
    manager = RunManager(store, prune_interval=timedelta(hours=1))
    await manager.start()
    try:
        await until(lambda: manager.janitor.rounds >= 1, "the first round ran")
        timed_out = on_change(manager, lambda c: c.run.status is RunStatus.TIMEOUT)
        await manager.create_run("t1", run_timeout=timedelta(milliseconds=20))
        # Without the poke it would sleep for an hour.
        await asyncio.wait_for(timed_out.wait(), SETTLE_TIMEOUT)
    finally:
        await manager.close()


class _FailingOnceStore(InMemoryRunStore):
    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.failures = 1
        self.error = error or RuntimeError("database went away")

    async def expire_due(self, now: datetime, limit: int) -> list[Run]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await super().expire_due(now, limit)


async def test_a_failing_round_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FailingOnceStore()
    janitor = Janitor(store, FeedCache(store), error_backoff=0.01)
    with caplog.at_level(logging.ERROR, logger="runcontrol_server.domain.janitor"):
        janitor.start()
        try:
            await until(lambda: janitor.rounds >= 1, "a round succeeded after the failure")
        finally:
            await janitor.stop()
    (record,) = caplog.records
    assert "janitor round failed" in record.getMessage()
    assert record.exc_info is not None and "database went away" in str(record.exc_info[1])


async def test_an_outage_is_a_warning_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FailingOnceStore(StoreUnavailable("database unavailable: 57P01"))
    janitor = Janitor(store, FeedCache(store), error_backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="runcontrol_server.domain.janitor"):
        janitor.start()
        try:
            await until(lambda: janitor.rounds >= 1, "a round succeeded after the outage")
        finally:
            await janitor.stop()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "57P01" in record.getMessage()


async def test_start_and_stop_are_idempotent_and_leave_no_task() -> None:
    store = InMemoryRunStore()
    janitor = Janitor(store, FeedCache(store))
    await janitor.stop()  # before start: nothing to do
    janitor.start()
    janitor.start()
    assert janitor.running
    assert sum(t.get_name() == "runcontrol-janitor" for t in asyncio.all_tasks()) == 1
    await janitor.stop()
    await janitor.stop()
    assert not janitor.running
    assert not any(t.get_name() == "runcontrol-janitor" for t in asyncio.all_tasks())


# --- bounded memory --------------------------------------------------------------------


async def sweep_until_idle(janitor: Janitor) -> None:
    """Janitor rounds until one finds less than a full batch to do (as its loop would)."""
    for _ in range(1000):  # bounded
        if await janitor.sweep() != timedelta(0):
            return
    raise AssertionError("the janitor never caught up")


async def test_100k_finished_runs_leave_memory_back_near_empty() -> None:
    clock = FakeTime()
    history_max_age = timedelta(seconds=2)
    store = InMemoryRunStore(clock=MonotonicClock(clock), history_max_age=history_max_age)
    retention = timedelta(seconds=1)
    manager = RunManager(store, retention=retention)
    # Not started: the janitor's rounds are driven here, on the fake clock.
    step, sweep_every = timedelta(milliseconds=1), 1000
    kept = retention // step  # the runs that finished within the retention period
    try:
        peaks: list[int] = []
        for i in range(100_000):
            clock.now += step
            run = (await manager.create_run(f"t{i % 1000}", request_id=f"r{i}")).run
            await manager.set_status(run.run_id, RunStatus.ERROR)
            if i % sweep_every == sweep_every - 1:
                peaks.append(store.sizes()["runs"])
                await sweep_until_idle(manager.janitor)
                # Exactly the last `kept` runs are left: none deleted early, none kept late.
                assert store.sizes()["runs"] == kept, i
        # Memory stayed bounded while the runs were being made: never 100k runs at once.
        assert max(peaks) == kept + sweep_every
        clock.now += retention + step
        await sweep_until_idle(manager.janitor)  # the last runs go
        clock.now += history_max_age + step
        await sweep_until_idle(manager.janitor)  # so do the changes that deleted them
        assert store.sizes() == dict.fromkeys(
            (
                "runs",
                "threads",
                "requests",
                "history",
                "deadlines",
                "leases",
                "lease_heap",
                "finished",
            ),
            0,
        )
        assert manager.waiters.count == 0
    finally:
        await manager.close()
