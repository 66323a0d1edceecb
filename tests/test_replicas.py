"""Several real server processes on one PostgreSQL database behave as one service.

Every test runs `python -m runcontrol_server --store postgresql://...` twice (replicas
A and B, each its own process, pool and change-feed reader) on a fresh database of the
session's throwaway cluster, and drives them over the wire with the raw stubs:

1. read-your-writes across replicas;
2. REJECT creates racing on one thread across replicas: exactly one winner;
3. claimers racing across replicas: exactly one RUNNING claim;
4. a watch on one replica sees every revision of both, in order, once each;
5. a watch resumed on the other replica continues exactly where it stopped;
6. a replica SIGKILLed under load loses no acknowledged create;
7. the database itself killed and restarted: UNAVAILABLE / STORE_UNAVAILABLE while it
   is down, recovery on its own, no acknowledged write lost (own cluster, not the
   session's).

Every call has a deadline and every phase an `asyncio.timeout`; loops are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from _server_process import ServerProcess, server_process
from _streams import open_watch, read

from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol.v1.run_control_pb2_grpc import RunControlStub
from runcontrol_server.pgserver import LocalPostgres

if TYPE_CHECKING:  # declared by the stubs only (what RunControlStub(aio channel) returns)
    from runcontrol.v1.run_control_pb2_grpc import RunControlAsyncStub

Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]

# The deadline of every unary call: generous for 2 loaded cores, far below the test timeout.
CALL = 15.0
REJECT = run_pb2.MULTITASK_STRATEGY_REJECT
INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
PENDING = run_pb2.RUN_STATUS_PENDING
RUNNING = run_pb2.RUN_STATUS_RUNNING
SUCCESS = run_pb2.RUN_STATUS_SUCCESS
INTERRUPTED = run_pb2.RUN_STATUS_INTERRUPTED
ADDED, MODIFIED, DELETED = (
    run_pb2.EVENT_TYPE_ADDED,
    run_pb2.EVENT_TYPE_MODIFIED,
    run_pb2.EVENT_TYPE_DELETED,
)
MAX_PAGE = 1000


# --------------------------------------------------------------------------- replicas


@dataclass
class Replica:
    name: str
    process: ServerProcess
    stub: RunControlAsyncStub

    @property
    def pid(self) -> int:
        return self.process.proc.pid


@contextlib.asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[Replica]:
    """One server process on `url` and a stub connected to it. Its stderr (WARNING and
    up) is printed once it has exited, so a failing test shows the server's side."""
    args = ("--listen", "127.0.0.1:0", "--store", url, "--log-level", "WARNING")
    started: ServerProcess | None = None
    try:
        async with server_process(*args) as process:
            started = process
            async with grpc.aio.insecure_channel(process.address) as channel:
                yield Replica(name, process, RunControlStub(channel))
    finally:
        if started is not None and started.stderr.done() and not started.stderr.cancelled():
            err = started.stderr.result().decode(errors="replace")
            if err.strip():
                print(f"--- stderr of replica {name} (pid {started.proc.pid}) ---\n{err}")


@contextlib.asynccontextmanager
async def two_replicas(url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    async with replica(url, "A") as a, replica(url, "B") as b:
        yield a, b


# --------------------------------------------------------------------------- helpers


async def error_of(call: Awaitable[Any]) -> RunControlError:
    """Await a call that must fail; its decoded error (status code, ErrorInfo)."""
    try:
        result = await call
    except grpc.aio.AioRpcError as error:
        return from_grpc_error(error)
    raise AssertionError(f"expected the call to fail, it answered {result}")


def decoded(outcome: object) -> RunControlError:
    assert isinstance(outcome, grpc.aio.AioRpcError), f"unexpected outcome {outcome!r}"
    return from_grpc_error(outcome)


async def create(
    stub: RunControlAsyncStub,
    thread_id: str,
    strategy: run_pb2.MultitaskStrategy.ValueType = REJECT,
    *,
    deadline: float = CALL,
) -> pb.CreateRunResponse:
    request = pb.CreateRunRequest(thread_id=thread_id, multitask_strategy=strategy)
    response: pb.CreateRunResponse = await stub.CreateRun(request, timeout=deadline)
    return response


async def set_status(
    stub: RunControlAsyncStub,
    run_id: str,
    status: run_pb2.RunStatus.ValueType,
    worker_id: str,
    *,
    deadline: float = CALL,
) -> pb.SetRunStatusResponse:
    request = pb.SetRunStatusRequest(run_id=run_id, status=status, worker_id=worker_id)
    response: pb.SetRunStatusResponse = await stub.SetRunStatus(request, timeout=deadline)
    return response


async def cancel(
    stub: RunControlAsyncStub, run_id: str, *, deadline: float = CALL
) -> pb.CancelRunResponse:
    response: pb.CancelRunResponse = await stub.CancelRun(
        pb.CancelRunRequest(run_id=run_id), timeout=deadline
    )
    return response


async def get(
    stub: RunControlAsyncStub, run_id: str, *, deadline: float = CALL
) -> run_pb2.RunRecord:
    response = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=deadline)
    record: run_pb2.RunRecord = response.run
    return record


async def list_all(stub: RunControlAsyncStub, thread_id: str = "") -> tuple[list[Any], int]:
    """Every run (following page tokens on this one replica) and the first page's revision."""
    runs: list[Any] = []
    token = ""
    revision = None
    for _ in range(1000):  # bounded
        page = await stub.ListRuns(
            pb.ListRunsRequest(thread_id=thread_id, page_size=MAX_PAGE, page_token=token),
            timeout=CALL,
        )
        if revision is None:
            revision = page.revision
        runs.extend(page.runs)
        token = page.next_page_token
        if not token:
            assert revision is not None
            return runs, revision
    raise AssertionError("too many pages")


async def head(stub: RunControlAsyncStub) -> int:
    page = await stub.ListRuns(pb.ListRunsRequest(page_size=1), timeout=CALL)
    revision: int = page.revision
    return revision


@dataclass
class StreamLog:
    """The event messages one WatchRuns stream delivered, read by a background task."""

    call: Stream
    messages: list[pb.WatchRunsResponse] = field(default_factory=list)
    progress: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> StreamLog:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        for _ in range(100_000):  # bounded: at most one message per revision
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            if message.progress_only:
                self.progress += 1
            else:
                assert message.events, message
                self.messages.append(message)
            self.changed.set()

    @property
    def last_revision(self) -> int:
        return self.messages[-1].revision if self.messages else 0

    async def wait_for(self, condition: Callable[[], bool], what: str, within: float) -> None:
        """Until `condition()` holds; fails if the stream ends or fails first."""
        assert self.task is not None
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self.changed.clear()
                    if self.task.done():
                        self.task.result()  # raises the stream's error, if any
                        raise AssertionError(f"stream ended before {what}")
                    waiter = asyncio.ensure_future(self.changed.wait())
                    await asyncio.wait((waiter, self.task), return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {what}; last revision {self.last_revision}"
            ) from None

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                async with asyncio.timeout(5):
                    await self.task


async def initial_set(call: Stream) -> tuple[dict[str, Any], int]:
    """The runs of a `send_initial` stream's initial set and its revision."""
    runs: dict[str, Any] = {}
    for _ in range(1000):  # bounded: 500 runs per message
        message = await read(call)
        for event in message.events:
            assert (event.type, event.revision) == (ADDED, event.run.mod_revision), event
            runs[event.run.run_id] = event.run
        if message.end_of_initial_set:
            return runs, message.revision
    raise AssertionError("no end of the initial set")


def event_revisions(messages: Iterable[pb.WatchRunsResponse]) -> list[int]:
    """The revisions of the event messages, checking each event is of its message's."""
    revisions = []
    for message in messages:
        for event in message.events:
            assert event.revision == message.revision, message
        revisions.append(message.revision)
    return revisions


def apply_events(state: dict[str, Any], messages: Iterable[pb.WatchRunsResponse]) -> None:
    for message in messages:
        for event in message.events:
            if event.type == DELETED:
                assert event.run.run_id in state, event
                del state[event.run.run_id]
            else:
                assert event.run.mod_revision == message.revision, event
                assert (event.type == ADDED) == (event.run.run_id not in state), event
                state[event.run.run_id] = event.run


# --------------------------------------------------------------------------- 1


async def test_read_your_writes_across_replicas(pg_url: str) -> None:
    async with two_replicas(pg_url) as (a, b), asyncio.timeout(45):
        for i in range(20):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            thread = f"ryw-{i}"
            created = (await create(writer.stub, thread)).run

            # At once on the other replica: no retry, no wait.
            assert await get(reader.stub, created.run_id) == created
            listed = await reader.stub.ListRuns(pb.ListRunsRequest(thread_id=thread), timeout=CALL)
            assert list(listed.runs) == [created]
            assert listed.revision >= created.create_revision
            inflight = await reader.stub.HasInflight(
                pb.HasInflightRequest(thread_id=thread), timeout=CALL
            )
            assert (inflight.has_inflight, list(inflight.run_ids)) == (True, [created.run_id])
            assert inflight.revision >= created.create_revision

            # ... and back: the reader claims and finishes, the writer sees it at once.
            claimed = await set_status(reader.stub, created.run_id, RUNNING, "w1")
            assert claimed.changed
            assert await get(writer.stub, created.run_id) == claimed.run
            done = await set_status(writer.stub, created.run_id, SUCCESS, "w1")
            assert done.changed
            inflight = await reader.stub.HasInflight(
                pb.HasInflightRequest(thread_id=thread), timeout=CALL
            )
            assert (inflight.has_inflight, list(inflight.run_ids)) == (False, [])
            assert await get(reader.stub, created.run_id) == done.run
            # The thread is free on both replicas: REJECT succeeds on the reader.
            again = await create(reader.stub, thread)
            assert again.run.create_revision == done.run.mod_revision + 1
        # One revision counter: both replicas agree on the head.
        assert await head(a.stub) == await head(b.stub) == 20 * 4


# --------------------------------------------------------------------------- 2

REJECT_ROUNDS = 100
REJECT_RACERS = 32


@pytest.mark.timeout(120)
async def test_reject_race_across_replicas_has_one_winner(pg_url: str) -> None:
    thread = "contended"
    async with two_replicas(pg_url) as (a, b), asyncio.timeout(100):
        stubs = (a.stub, b.stub)
        started = time.monotonic()
        for round_no in range(REJECT_ROUNDS):
            outcomes = await asyncio.gather(
                *(create(stubs[i % 2], thread) for i in range(REJECT_RACERS)),
                return_exceptions=True,
            )
            winners = [o for o in outcomes if isinstance(o, pb.CreateRunResponse)]
            assert len(winners) == 1, (round_no, outcomes)
            winner = winners[0].run
            for outcome in outcomes:
                if isinstance(outcome, pb.CreateRunResponse):
                    continue
                error = decoded(outcome)
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (round_no, error)
                assert error.reason == "THREAD_BUSY", (round_no, error)
                assert error.metadata == {
                    "thread_id": thread,
                    "inflight_run_ids": winner.run_id,
                }, (round_no, error)
            # Cancelled on the replica that did not necessarily create it.
            cancelled = await cancel(stubs[round_no % 2], winner.run_id)
            assert cancelled.cancelled
            assert cancelled.run.status == INTERRUPTED
        elapsed = time.monotonic() - started
        runs, revision = await list_all(b.stub, thread)
        # Every round: one create and one cancel, nothing else took a revision.
        assert revision == 2 * REJECT_ROUNDS
        assert len(runs) == REJECT_ROUNDS
        assert all(run.status == INTERRUPTED for run in runs)
        print(f"{REJECT_ROUNDS} rounds of {REJECT_RACERS} racers in {elapsed:.1f}s")


# --------------------------------------------------------------------------- 3

CLAIM_ROUNDS = 20
CLAIMERS = 16


async def test_claim_race_across_replicas_has_one_winner(pg_url: str) -> None:
    async with two_replicas(pg_url) as (a, b), asyncio.timeout(50):
        stubs = (a.stub, b.stub)
        for round_no in range(CLAIM_ROUNDS):
            run = (await create(stubs[round_no % 2], f"claim-{round_no}")).run
            outcomes = await asyncio.gather(
                *(set_status(stubs[i % 2], run.run_id, RUNNING, f"w{i}") for i in range(CLAIMERS)),
                return_exceptions=True,
            )
            wins = [
                (i, o) for i, o in enumerate(outcomes) if isinstance(o, pb.SetRunStatusResponse)
            ]
            assert len(wins) == 1, (round_no, outcomes)
            index, won = wins[0]
            winner = f"w{index}"
            assert won.changed
            assert (won.run.status, won.run.worker_id) == (RUNNING, winner)
            # One claim, one revision.
            assert won.run.mod_revision == run.create_revision + 1
            for i, outcome in enumerate(outcomes):
                if i == index:
                    continue
                error = decoded(outcome)
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (round_no, error)
                assert error.reason == "ALREADY_CLAIMED", (round_no, error)
                assert error.metadata == {"run_id": run.run_id, "worker_id": winner}, error
            for stub in stubs:
                assert await get(stub, run.run_id) == won.run
            # The winner repeating its claim on the other replica changes nothing.
            repeat = await set_status(stubs[(index + 1) % 2], run.run_id, RUNNING, winner)
            assert (repeat.changed, repeat.run) == (False, won.run)
            loser = f"w{(index + 1) % CLAIMERS}"
            error = await error_of(set_status(stubs[index % 2], run.run_id, SUCCESS, loser))
            assert error.reason == "ALREADY_CLAIMED", error
            done = await set_status(stubs[(index + 1) % 2], run.run_id, SUCCESS, winner)
            assert done.changed
        assert await head(a.stub) == await head(b.stub) == CLAIM_ROUNDS * 3


# --------------------------------------------------------------------------- 4 and 5


@dataclass
class Ack:
    """A write a replica acknowledged: its revision and what it must have done."""

    revision: int
    run_id: str
    kind: int  # the event type the unfiltered watch must show for run_id


@dataclass
class Writers:
    """Workers doing mixed writes on both replicas, every acknowledged revision kept."""

    stubs: tuple[RunControlAsyncStub, RunControlAsyncStub]
    acks: list[Ack] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def ack(self, revision: int, run_id: str, kind: int) -> None:
        self.acks.append(Ack(revision, run_id, kind))

    async def worker(self, worker_no: int, cycles: int) -> None:
        """`cycles` rounds (or until `stop`) of four scripts, alternating replicas."""
        for cycle in range(cycles):
            if self.stop.is_set():
                return
            x, y = self.stubs if (worker_no + cycle) % 2 == 0 else self.stubs[::-1]
            thread = f"mix-{worker_no}-{cycle}"
            script = cycle % 4
            first = (await create(x, thread)).run
            self.ack(first.create_revision, first.run_id, ADDED)
            if script == 0:  # claim, repeat (no revision), finish, delete
                claimed = await set_status(y, first.run_id, RUNNING, f"w{worker_no}")
                self.ack(claimed.run.mod_revision, first.run_id, MODIFIED)
                repeat = await set_status(x, first.run_id, RUNNING, f"w{worker_no}")
                assert not repeat.changed
                done = await set_status(x, first.run_id, SUCCESS, f"w{worker_no}")
                self.ack(done.run.mod_revision, first.run_id, MODIFIED)
                deleted = await y.DeleteRun(pb.DeleteRunRequest(run_id=first.run_id), timeout=CALL)
                self.ack(deleted.revision, first.run_id, DELETED)
            elif script == 1:  # cancel, cancel again (no revision)
                cancelled = await cancel(y, first.run_id)
                self.ack(cancelled.run.mod_revision, first.run_id, MODIFIED)
                assert not (await cancel(x, first.run_id)).cancelled
            elif script == 2:  # INTERRUPT: one revision, two events
                second = await create(y, thread, INTERRUPT)
                assert [r.run_id for r in second.interrupted_runs] == [first.run_id]
                self.ack(second.run.create_revision, second.run.run_id, ADDED)
                self.ack(second.run.create_revision, first.run_id, MODIFIED)
            else:  # REJECTed on the other replica (no revision), then claimed there
                error = await error_of(create(y, thread))
                assert error.reason == "THREAD_BUSY", error
                claimed = await set_status(y, first.run_id, RUNNING, f"w{worker_no}")
                self.ack(claimed.run.mod_revision, first.run_id, MODIFIED)

    def check_against(self, messages: list[pb.WatchRunsResponse], first: int, last: int) -> None:
        """Every acknowledged revision in [first, last] is in `messages` as acknowledged,
        and `messages` holds no other revision."""
        by_revision = {m.revision: m for m in messages}
        acked = {ack.revision for ack in self.acks if first <= ack.revision <= last}
        assert acked == set(by_revision), sorted(acked ^ set(by_revision))
        for ack in self.acks:
            if first <= ack.revision <= last:
                events = {(e.run.run_id, e.type) for e in by_revision[ack.revision].events}
                assert (ack.run_id, ack.kind) in events, (ack, by_revision[ack.revision])


WATCH_WORKERS = 8
WATCH_CYCLES = 20


@pytest.mark.timeout(90)
async def test_watch_sees_both_replicas_in_revision_order(pg_url: str) -> None:
    async with two_replicas(pg_url) as (a, b), asyncio.timeout(75):
        # Something to send in the initial set, from both replicas.
        seeded = [(await create(s.stub, f"seed-{s.name}")).run for s in (a, b)]
        # The initial set on A (the stream then goes on), and the same on B.
        call = a.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
        initial, start = await initial_set(call)
        other = b.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
        try:
            assert await initial_set(other) == (initial, start)
        finally:
            other.cancel()
        assert set(initial) == {run.run_id for run in seeded}
        assert start == 2

        log = StreamLog(call).start()
        try:
            writers = Writers((a.stub, b.stub))
            await asyncio.gather(*(writers.worker(n, WATCH_CYCLES) for n in range(WATCH_WORKERS)))
            final = await head(b.stub)
            assert await head(a.stub) == final
            await log.wait_for(
                lambda: log.last_revision >= final, f"revision {final} on A", within=15
            )
        finally:
            await log.close()

        revisions = event_revisions(log.messages)
        # Every revision after the initial set, in order, once each: no gap, no duplicate.
        assert revisions == list(range(start + 1, final + 1))
        assert len(revisions) >= 300
        writers.check_against(log.messages, start + 1, final)
        # The events rebuild exactly what both replicas list.
        state = dict(initial)
        apply_events(state, log.messages)
        for stub in (a.stub, b.stub):
            runs, revision = await list_all(stub)
            assert revision == final
            assert {run.run_id: run for run in runs} == state


RESUME_BATCH = 60


@pytest.mark.timeout(90)
async def test_watch_resumed_on_other_replica_continues_exactly(pg_url: str) -> None:
    async with two_replicas(pg_url) as (a, b), asyncio.timeout(75):
        writers = Writers((a.stub, b.stub))
        load = [asyncio.ensure_future(writers.worker(n, 10_000)) for n in range(4)]
        try:
            # From now on A, read a batch, then stop reading mid-load.
            on_a = StreamLog(a.stub.WatchRuns(pb.WatchRunsRequest())).start()
            try:
                await on_a.wait_for(
                    lambda: len(on_a.messages) >= RESUME_BATCH, "a batch on A", within=20
                )
            finally:
                await on_a.close()
            seen_a = list(on_a.messages)
            first, last_a = seen_a[0].revision, seen_a[-1].revision
            assert event_revisions(seen_a) == list(range(first, last_a + 1))

            # Resumed on B while the writers go on.
            on_b = StreamLog(
                b.stub.WatchRuns(pb.WatchRunsRequest(start_revision=last_a + 1))
            ).start()
            try:
                await on_b.wait_for(
                    lambda: len(on_b.messages) >= RESUME_BATCH, "a batch on B", within=20
                )
                writers.stop.set()
                async with asyncio.timeout(20):
                    await asyncio.gather(*load)
                final = await head(a.stub)
                await on_b.wait_for(
                    lambda: on_b.last_revision >= final, f"revision {final} on B", within=15
                )
            finally:
                await on_b.close()
        finally:
            writers.stop.set()
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
            for task in load:  # a worker's own failure is the test's failure
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

        seen_b = list(on_b.messages)
        assert seen_b[0].revision == last_a + 1, "the resumed stream skipped or repeated"
        assert event_revisions(seen_a + seen_b) == list(range(first, final + 1))
        writers.check_against(seen_a + seen_b, first, final)

        # B serves that very history: the same messages as A plus B delivered.
        replay = StreamLog(b.stub.WatchRuns(pb.WatchRunsRequest(start_revision=first))).start()
        try:
            await replay.wait_for(
                lambda: replay.last_revision >= final, "the replay on B", within=15
            )
        finally:
            await replay.close()
        assert replay.messages == seen_a + seen_b


# --------------------------------------------------------------------------- 6

KILL_AFTER = 150
CREATORS = 8


@pytest.mark.timeout(90)
async def test_sigkilled_replica_loses_no_acknowledged_create(pg_url: str) -> None:
    acked: list[str] = []
    failures: list[RunControlError] = []

    async def creator(stub: RunControlAsyncStub, n: int) -> None:
        for i in range(100_000):  # bounded; ends at the first failure (the kill)
            try:
                created = await create(stub, f"load-{n}-{i}")
            except grpc.aio.AioRpcError as error:
                failures.append(from_grpc_error(error))
                return
            acked.append(created.run.run_id)

    async with asyncio.timeout(75), replica(pg_url, "B") as b:
        async with replica(pg_url, "A") as a:
            load = [asyncio.ensure_future(creator(a.stub, n)) for n in range(CREATORS)]
            try:
                async with asyncio.timeout(30):
                    while len(acked) < KILL_AFTER:
                        done, _ = await asyncio.wait(load, timeout=0.01)
                        assert not done, "a creator stopped before the kill"
                a.process.proc.kill()  # SIGKILL, by its pid, mid-load
                async with asyncio.timeout(CALL + 5):
                    await asyncio.gather(*load)
            finally:
                for task in load:
                    task.cancel()
        assert len(failures) == CREATORS
        # Report what a client sees when its replica dies mid-call.
        codes = sorted({f.code.name for f in failures})
        print(f"acknowledged {len(acked)} creates; in-flight calls failed with {codes}")
        assert codes == ["UNAVAILABLE"], failures

        runs, revision = await list_all(b.stub)
        ids = {run.run_id for run in runs}
        assert set(acked) <= ids, f"lost {len(set(acked) - ids)} acknowledged creates"
        # Committed but unacknowledged creates may exist; nothing else, and no gap:
        # every revision is one create.
        assert revision == len(runs)
        assert len(runs) - len(acked) <= CREATORS
        sample = acked[:: max(1, len(acked) // 20)]
        for run_id in sample:
            assert (await get(b.stub, run_id)).status == PENDING

        # A new process on the same database sees the same.
        async with replica(pg_url, "A2") as a2:
            runs2, revision2 = await list_all(a2.stub)
            assert (revision2, {run.run_id: run for run in runs2}) == (
                revision,
                {run.run_id: run for run in runs},
            )
            for run_id in sample:
                assert (await get(a2.stub, run_id)).status == PENDING
            created = (await create(a2.stub, "after-restart")).run
            assert created.create_revision == revision + 1
            assert await get(b.stub, created.run_id) == created


# --------------------------------------------------------------------------- 7

# The deadline of a call during the outage (the store's pool gives up after 5 s): a
# server that hung instead of answering STORE_UNAVAILABLE ends it with DEADLINE_EXCEEDED.
OUTAGE_CALL = 12.0
RECOVERY_WITHIN = 30.0


@dataclass
class OwnPostgres:
    """This test's own PostgreSQL (the session's cluster must not be restarted)."""

    server: LocalPostgres

    async def command(self, line: str) -> str:
        verb, *args = line.split()
        if verb == "create":
            return await asyncio.to_thread(self.server.create_database, args[0])
        await asyncio.to_thread(getattr(self.server, verb))  # start, stop, kill
        return ""


@contextlib.asynccontextmanager
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    server = LocalPostgres()
    try:
        yield OwnPostgres(server)
    finally:
        await asyncio.to_thread(server.close)


LOAD_CREATORS = 4


@dataclass
class CreateLoad:
    """Creators on fresh threads until `stop`: every acknowledged run, every failure."""

    stub: RunControlAsyncStub
    acked: list[Any] = field(default_factory=list)
    failures: list[RunControlError] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def creator(self, n: int) -> None:
        for i in range(100_000):  # bounded
            if self.stop.is_set():
                return
            try:
                self.acked.append((await create(self.stub, f"load-{n}-{i}")).run)
            except grpc.aio.AioRpcError as error:
                self.failures.append(from_grpc_error(error))
                await asyncio.sleep(0.05)  # pacing only: no busy loop against a dead store


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outage", ["kill", "stop"])
async def test_database_restart_under_load(outage: str) -> None:
    """`kill`: SIGKILL of every PostgreSQL process (a crash); `stop`: fast shutdown
    (backends end their sessions with 57P01 admin_shutdown)."""
    async with own_postgres() as pg, asyncio.timeout(110):
        await pg.command("start")
        url = await pg.command("create restart")
        async with replica(url, "R") as r:
            stub = r.stub
            call = await open_watch(stub)  # before any write: initial set empty, revision 0
            log = StreamLog(call).start()
            load = CreateLoad(stub)
            creators = [asyncio.ensure_future(load.creator(n)) for n in range(LOAD_CREATORS)]
            try:
                async with asyncio.timeout(20):
                    while len(load.acked) < 50:
                        done, _ = await asyncio.wait(creators, timeout=0.01)
                        assert not done, "a creator stopped"
                await log.wait_for(lambda: len(log.messages) >= 50, "50 creates watched", 10)

                await pg.command(outage)
                acked_before = len(load.acked)

                async def outage_call(name: str, call: Awaitable[Any]) -> tuple[str, Any]:
                    return name, await error_of(call)

                run_id = load.acked[0].run_id
                results = list(
                    await asyncio.gather(
                        outage_call("CreateRun", create(stub, "during", deadline=OUTAGE_CALL)),
                        outage_call("GetRun", get(stub, run_id, deadline=OUTAGE_CALL)),
                        outage_call(
                            "ListRuns", stub.ListRuns(pb.ListRunsRequest(), timeout=OUTAGE_CALL)
                        ),
                        outage_call(
                            "HasInflight",
                            stub.HasInflight(
                                pb.HasInflightRequest(thread_id="x"), timeout=OUTAGE_CALL
                            ),
                        ),
                        outage_call(
                            "SetRunStatus",
                            set_status(stub, run_id, RUNNING, "w", deadline=OUTAGE_CALL),
                        ),
                        outage_call("CancelRun", cancel(stub, run_id, deadline=OUTAGE_CALL)),
                    )
                )
                # ... and a second wave, once the pool knows its connections are dead.
                results += await asyncio.gather(
                    outage_call("GetRun#2", get(stub, run_id, deadline=OUTAGE_CALL)),
                    outage_call("CreateRun#2", create(stub, "during-2", deadline=OUTAGE_CALL)),
                )
                report = [(n, e.code.name, e.reason) for n, e in results]
                print(f"during the outage ({outage}):", report)
                for name, error in results:
                    # An answer from the server before the call's deadline, not a hang.
                    assert error.code == grpc.StatusCode.UNAVAILABLE, (name, error)
                    assert error.reason == "STORE_UNAVAILABLE", (name, error)
                assert log.task is not None
                assert not log.task.done(), "the watch ended during the outage"
                # At most the creates in flight at the outage were acknowledged since.
                assert len(load.acked) - acked_before <= LOAD_CREATORS

                await pg.command("start")  # same port
                attempts = 0
                # Recovery on its own: bounded against a hang, never timed.
                async with asyncio.timeout(RECOVERY_WITHIN):
                    while True:
                        attempts += 1
                        try:
                            await get(stub, run_id)
                            break
                        except grpc.aio.AioRpcError as error:
                            failure = from_grpc_error(error)
                            assert failure.code == grpc.StatusCode.UNAVAILABLE, failure
                            await asyncio.sleep(0.1)  # pacing only
                print(f"recovered after {attempts} attempts")
                # The load goes on by itself.
                target = len(load.acked) + 50
                async with asyncio.timeout(20):
                    while len(load.acked) < target:
                        done, _ = await asyncio.wait(creators, timeout=0.01)
                        assert not done, "a creator stopped"
                load.stop.set()
                async with asyncio.timeout(CALL + 5):
                    await asyncio.gather(*creators)
            finally:
                load.stop.set()
                for task in creators:
                    task.cancel()
                await asyncio.gather(*creators, return_exceptions=True)

            try:
                failures = sorted({(f.code.name, f.reason) for f in load.failures})
                print(f"load: {len(load.acked)} acknowledged, failures {failures}")
                assert failures == [("UNAVAILABLE", "STORE_UNAVAILABLE")], load.failures
                runs, revision = await list_all(stub)
                listed = {run.run_id: run for run in runs}
                lost = [run.run_id for run in load.acked if listed.get(run.run_id) != run]
                assert not lost, f"acknowledged creates lost or changed: {lost}"
                # Unacknowledged commits at the outage at most; no gap in the revisions.
                assert len(runs) - len(load.acked) <= LOAD_CREATORS
                assert revision == len(runs)

                # The watch opened before the outage carried on: every revision once, and
                # its events rebuild the listing.
                await log.wait_for(lambda: log.last_revision >= revision, "the last create", 15)
                assert event_revisions(log.messages) == list(range(1, revision + 1))
                state: dict[str, Any] = {}
                apply_events(state, log.messages)
                assert state == listed
                print(f"the watch carried on ({log.progress} progress messages meanwhile)")
            finally:
                await log.close()
