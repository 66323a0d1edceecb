"""Prometheus metrics: scraped over HTTP from a real server after real calls.

The endpoint (`--metrics-listen`) binds 127.0.0.1 at a free port; values are checked
against what the test did: calls by method and code, runs by status, open watchers
and waiters, revisions, janitor lag.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import grpc
import pytest
from _streams import until
from prometheus_client.parser import text_string_to_metric_families

from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.app import ListenError, RunControlServer
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.domain import janitor as janitor_module
from runcontrol_server.domain.errors import StoreUnavailable
from runcontrol_server.domain.manager import RunManager
from runcontrol_server.domain.model import ChangeSet, Run, RunStatus
from runcontrol_server.observability.run_counts import RunCounts
from runcontrol_server.stores.memory import InMemoryRunStore

WAIT = 10.0  # bound of every wait on a condition
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    async with serve_in_process(settings=Settings(metrics_listen="127.0.0.1:0")) as running:
        yield running


def _scrape_now(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(server: InProcessServer) -> Samples:
    address = server.server.metrics_address
    assert address is not None and address.startswith("127.0.0.1:")
    return await asyncio.to_thread(_scrape_now, address)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def calls(samples: Samples, method: str, code: str) -> float | None:
    return value(
        samples,
        "runcontrol_rpcs_total",
        service="runcontrol.v1.RunControl",
        method=method,
        code=code,
        protocol="grpc",
    )


async def test_scrape_counts_calls_runs_watchers_and_waiters(server: InProcessServer) -> None:
    stub = server.stub
    created = [
        (await stub.CreateRun(pb.CreateRunRequest(thread_id=f"t{i}"))).run.run_id for i in range(3)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as busy:  # REJECT on a busy thread
        await stub.CreateRun(pb.CreateRunRequest(thread_id="t0"))
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.GetRun(pb.GetRunRequest(run_id=""))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=created[1], status=run_pb2.RUN_STATUS_RUNNING, worker_id="w1")
    )
    await stub.CancelRun(pb.CancelRunRequest(run_id=created[2]))

    watch = stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
    await watch.read()  # the initial set: the watcher is registered by now
    wait = asyncio.ensure_future(stub.WaitRun(pb.WaitRunRequest(run_id=created[0])))
    await until(lambda: server.manager.waiters.waiter_count == 1, "the wait is registered")

    samples = await scrape(server)
    assert calls(samples, "CreateRun", "OK") == 3
    assert calls(samples, "CreateRun", "FAILED_PRECONDITION") == 1
    assert calls(samples, "GetRun", "INVALID_ARGUMENT") == 2
    assert calls(samples, "SetRunStatus", "OK") == 1
    duration_count = value(
        samples,
        "runcontrol_rpc_duration_seconds_count",
        service="runcontrol.v1.RunControl",
        method="CreateRun",
        protocol="grpc",
    )
    assert duration_count == 4  # every CreateRun, whatever its code
    runs = {
        status.name: value(samples, "runcontrol_runs", status=status.name) for status in RunStatus
    }
    assert runs == {
        "PENDING": 1,
        "RUNNING": 1,
        "SUCCESS": 0,
        "ERROR": 0,
        "TIMEOUT": 0,
        "INTERRUPTED": 1,
    }
    assert value(samples, "runcontrol_watchers") == 1
    assert value(samples, "runcontrol_waiters") == 1
    head = server.manager.feed.history.head_revision
    assert head == 5  # three creates, a claim, a cancel
    assert value(samples, "runcontrol_revision") == head
    assert value(samples, "runcontrol_compacted_revision") == 0
    assert value(samples, "runcontrol_history_changes") == head
    lag = value(samples, "runcontrol_janitor_lag_seconds")
    assert lag is not None and lag >= 0
    assert (value(samples, "runcontrol_janitor_rounds_total") or 0) >= 1
    assert value(samples, "process_resident_memory_bytes")

    # The stream's end is counted with its code, its lifetime in the stream histogram.
    watch.cancel()
    await server.stub.CancelRun(pb.CancelRunRequest(run_id=created[0]))
    assert (await wait).done
    await until(lambda: server.manager.watch_hub.count == 0, "the stream ended")
    samples = await scrape(server)
    assert calls(samples, "WatchRuns", "CANCELLED") == 1
    stream_count = value(
        samples,
        "runcontrol_stream_duration_seconds_count",
        service="runcontrol.v1.RunControl",
        method="WatchRuns",
        protocol="grpc",
    )
    assert stream_count == 1
    assert calls(samples, "WaitRun", "OK") == 1
    assert value(samples, "runcontrol_watchers") == 0
    assert value(samples, "runcontrol_waiters") == 0
    assert value(samples, "runcontrol_runs", status="INTERRUPTED") == 2


async def test_runs_by_status_follow_every_change_and_deletion(server: InProcessServer) -> None:
    # Changes that did not come through this server's RPCs (another replica's, the
    # janitor's) reach the gauge the same way: through the change feed.
    manager = server.manager
    first = (await manager.create_run("a")).run
    await manager.create_run("b")
    await manager.cancel_run(first.run_id)
    await manager.delete_run(first.run_id)
    samples = await scrape(server)
    assert value(samples, "runcontrol_runs", status="PENDING") == 1
    assert value(samples, "runcontrol_runs", status="INTERRUPTED") == 0


class _GatedStore(InMemoryRunStore):
    """Holds the answer of the first snapshot until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = asyncio.Event()
        self.release = asyncio.Event()

    async def snapshot(
        self, thread_id: str | None, run_ids: frozenset[str]
    ) -> tuple[tuple[Run, ...], int]:
        answer = await super().snapshot(thread_id, run_ids)
        if not self.release.is_set():
            self.taken.set()
            await self.release.wait()
        return answer


async def test_changes_made_while_counting_are_applied_after_the_snapshot() -> None:
    store = _GatedStore()
    manager = RunManager(store)
    await manager.start()
    try:
        await manager.create_run("before")  # in the snapshot
        counts = RunCounts(manager)
        starting = asyncio.ensure_future(counts.start())
        await asyncio.wait_for(store.taken.wait(), WAIT)
        assert counts.counts() is None  # nothing reported while counting
        # After the snapshot's revision: held, then applied once.
        later = (await manager.create_run("during")).run
        await manager.set_status(later.run_id, RunStatus.RUNNING, worker_id="w")
        store.release.set()
        await asyncio.wait_for(starting, WAIT)
        assert counts.counts() == _only(PENDING=1, RUNNING=1)
        await counts.stop()
    finally:
        await manager.close()


class _BlockableStore(InMemoryRunStore):
    """Its change feed can be made unreadable (`blocked`), as in an outage."""

    blocked = False

    def __init__(self, history_limit: int) -> None:
        # Read like a database's feed, by the feed cache's reader.
        super().__init__(history_limit=history_limit, local_feed=False)

    async def read_changes(self, after: int, limit: int) -> Sequence[ChangeSet]:
        if self.blocked:
            raise StoreUnavailable("blocked by the test")
        return await super().read_changes(after, limit)


async def test_counts_start_over_when_the_feed_cache_skipped_changes() -> None:
    # The cache falls behind while the store compacts past it: the changes in the gap
    # never reach the listener, so the counts are taken again from a snapshot.
    store = _BlockableStore(history_limit=4)
    manager = RunManager(store, history_size=4)
    await manager.start()
    counts = RunCounts(manager)
    try:
        await counts.start()
        first = (await manager.create_run("t")).run
        await until(lambda: counts.counts() == _only(PENDING=1), "the create is counted")
        store.blocked = True
        await manager.cancel_run(first.run_id)  # in the gap
        for i in range(6):
            await manager.create_run(f"gap{i}")
        store.blocked = False
        await until(lambda: manager.feed.resyncs == 1, "the cache restarted past the gap")
        await until(
            lambda: counts.counts() == _only(PENDING=6, INTERRUPTED=1), "the counts started over"
        )
    finally:
        await counts.stop()
        await manager.close()


def _only(**counts: int) -> dict[RunStatus, int]:
    return {status: counts.get(status.name, 0) for status in RunStatus}


async def test_metrics_endpoint_stops_with_the_server() -> None:
    async with serve_in_process(settings=Settings(metrics_listen="127.0.0.1:0")) as running:
        address = running.server.metrics_address
        assert address is not None
        await scrape(running)
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_scrape_now, address)


async def test_metrics_off_by_default() -> None:
    async with serve_in_process() as running:
        assert running.server.metrics_address is None


async def test_a_taken_metrics_port_is_a_listen_error() -> None:
    async with serve_in_process(settings=Settings(metrics_listen="127.0.0.1:0")) as running:
        taken = running.server.metrics_address
        settings = Settings(listen="127.0.0.1:0", metrics_listen=taken)
        other = RunControlServer(settings)
        with pytest.raises(ListenError, match="metrics"):
            await other.start()
        await other.stop(grace=0)


def test_metrics_listen_setting() -> None:
    assert Settings().metrics_listen is None
    assert parse_settings(["--metrics-listen", "9464"], {}).metrics_listen == "127.0.0.1:9464"
    from_env = parse_settings([], {"RUNCONTROL_METRICS_LISTEN": "[::1]:0"})
    assert from_env.metrics_listen == "[::1]:0"
    with pytest.raises(SystemExit):
        parse_settings(["--metrics-listen", ":9464"], {})


class _StoppedClock:
    """Stands in for the `time` module of the janitor, which measures its lag with
    `time.monotonic()`: stopped, it moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_janitor_lag_shows_a_starved_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A starved event loop runs the janitor's round after it fell due. Here the janitor's
    # clock passes the due time while the round does not run (no real starvation, no
    # sleep): the lag reads how far past due the round is, then how late it began.
    clock = _StoppedClock()
    monkeypatch.setattr(janitor_module, "time", clock)
    hour = timedelta(hours=1)
    manager = RunManager(InMemoryRunStore(), prune_interval=hour)  # a round, then an hour
    await manager.start()
    try:
        janitor = manager.janitor
        # The in-memory store never awaits: a finished round is a janitor asleep.
        await until(lambda: janitor.rounds == 1, "the first round")
        assert janitor.lag == 0.0  # due in an hour
        clock.now += hour.total_seconds() + 0.25
        assert janitor.lag == pytest.approx(0.25)  # due, and not run yet
        # A deadline earlier than the hour wakes the janitor: its round begins late.
        await manager.create_run("t", run_timeout=timedelta(minutes=5))
        await until(lambda: janitor.rounds == 2, "the round the create woke")
        assert janitor.last_lag == pytest.approx(0.25)
        assert janitor.lag == pytest.approx(0.25)  # asleep again: the last round's lag
    finally:
        await manager.close()
