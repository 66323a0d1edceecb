"""Graceful shutdown with open WatchRuns streams and WaitRun calls.

The process tests run the real `python -m runcontrol_server` (port 0, the port read
from the `listening on` line) holding several streams and waits, then send SIGTERM
or SIGINT: every stream and wait must end with UNAVAILABLE / SHUTTING_DOWN telling
its client where to resume, new calls must be refused, and the process must exit 0
long before the grace period. What the process cannot show once it is gone (the
attached run was left alone) is checked in-process with `RunControlServer.begin_drain`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from _server_process import EXIT_TIMEOUT, server_process
from _streams import until
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc as pb_grpc
from runcontrol.v1 import run_pb2
from runcontrol_server.app import RUN_CONTROL_SERVICE
from runcontrol_server.config import Settings
from runcontrol_server.domain import RunStatus

CALL_TIMEOUT = 5.0
# An hour: nothing holds the server once streams and waits are ended, so it exits
# within EXIT_TIMEOUT; one that waited for the grace period could not.
GRACE = 3600.0
MAX_MESSAGES = 10_000
# Runs of ~60 KB each: more than a stream's flow-control windows hold.
BIG_RUNS = 200  # every read loop is bounded; each read is bounded too

ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE
RUNNING, SUCCESS = run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_SUCCESS
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Stream = Any  # grpc.aio.UnaryStreamCall[WatchRunsRequest, WatchRunsResponse]


# --- streams ---------------------------------------------------------------------------


@dataclass
class Watch:
    """One open stream and the revisions its client has read so far."""

    name: str
    call: Stream
    # The stream's starting point: what it must be told to resume from if it never
    # received anything.
    start: int
    messages: list[pb.WatchRunsResponse] = field(default_factory=list)

    @property
    def revisions(self) -> list[int]:
        return [m.revision for m in self.messages]

    @property
    def events(self) -> list[pb.RunEvent]:
        return [e for m in self.messages for e in m.events]

    @property
    def expected_resume(self) -> int:
        return self.revisions[-1] + 1 if self.revisions else self.start

    async def read(self) -> pb.WatchRunsResponse:
        async with asyncio.timeout(CALL_TIMEOUT):
            message = await self.call.read()
        assert message is not grpc.aio.EOF, f"{self.name}: stream ended without a status"
        assert isinstance(message, pb.WatchRunsResponse)
        self.messages.append(message)
        return message

    async def read_until(self, done: Callable[[pb.WatchRunsResponse], bool]) -> None:
        for _ in range(MAX_MESSAGES):
            if done(await self.read()):
                return
        raise AssertionError(f"{self.name}: too many messages")

    async def read_to_error(self) -> RunControlError:
        """Read what is left (the server may have sent more before ending), then the status."""
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await self.read_until(lambda _: False)
        return from_grpc_error(ended.value)


async def _next_health(call: Any) -> int:
    async with asyncio.timeout(CALL_TIMEOUT):
        message = await call.read()
    assert message is not grpc.aio.EOF, "health stream ended"
    status: int = message.status
    return status


def assert_shutting_down(error: RunControlError, revision: int, what: str) -> None:
    assert error.code == grpc.StatusCode.UNAVAILABLE, (what, error)
    assert error.reason == "SHUTTING_DOWN", (what, error)
    assert error.metadata == {"revision": str(revision), "resume_revision": str(revision + 1)}, (
        what,
        error.metadata,
    )


async def _create(stub: Any, thread_id: str, **fields: Any) -> run_pb2.RunRecord:
    response = await stub.CreateRun(
        pb.CreateRunRequest(thread_id=thread_id, **fields), timeout=CALL_TIMEOUT
    )
    run: run_pb2.RunRecord = response.run
    return run


async def _move(stub: Any, run_id: str, status: run_pb2.RunStatus.ValueType) -> int:
    response = await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run_id, status=status, worker_id="w"), timeout=CALL_TIMEOUT
    )
    return int(response.run.mod_revision)


# --- the real process ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_ends_streams_and_waits_with_resume_revisions_then_exits_0(
    signum: signal.Signals,
) -> None:
    async with server_process("--listen", "127.0.0.1:0", "--grace-period", str(GRACE)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.RunControlStub(channel)

            # Some history before any stream opens; `waited` is waited on later.
            first = await _create(stub, "alpha")
            await _create(stub, "beta")
            waited = await _create(stub, "waits")
            assert waited.on_disconnect == run_pb2.DISCONNECT_MODE_CANCEL

            # 1. Caught up with everything: its end-of-initial-set proves it is registered.
            everything = Watch(
                "everything", stub.WatchRuns(pb.WatchRunsRequest(send_initial=True)), 0
            )
            await everything.read_until(lambda m: m.end_of_initial_set)
            # 2. Filtered (thread alpha, RUNNING only), with fast progress messages so its
            #    position is known even where nothing matched.
            filtered = Watch(
                "filtered",
                stub.WatchRuns(
                    pb.WatchRunsRequest(
                        thread_id="alpha",
                        statuses=[RUNNING],
                        send_initial=True,
                        progress_interval=Duration(nanos=100_000_000),
                    )
                ),
                0,
            )
            await filtered.read_until(lambda m: m.end_of_initial_set)
            # 3. Replaying history from revision 1, never read before the signal: the big
            #    runs below fill its flow-control window, so the server's position in it
            #    stays behind the head. Its resume point must be its own, not the head's.
            stalled = Watch("stalled", stub.WatchRuns(pb.WatchRunsRequest(start_revision=1)), 1)

            # Changes after the streams opened: some match the filter, some do not.
            await _move(stub, first.run_id, RUNNING)  # alpha enters RUNNING: ADDED
            second = await _create(stub, "alpha", multitask_strategy=ENQUEUE)
            await _create(stub, "gamma")
            await _move(stub, first.run_id, SUCCESS)  # leaves RUNNING: DELETED
            await _move(stub, second.run_id, RUNNING)  # ADDED
            big = Struct()
            big.update({"blob": "x" * 60_000})
            for i in range(BIG_RUNS):
                await _create(stub, f"bulk{i}", metadata=big)
            head = await _create(stub, "delta")  # the last change: matches only `everything`
            head_revision = head.create_revision

            await everything.read_until(lambda m: m.revision == head_revision)
            # Its position is the head once a progress message says so (it processed the
            # last, non-matching change without sending anything for it).
            await filtered.read_until(lambda m: m.progress_only and m.revision == head_revision)
            assert [(e.type, e.run.run_id) for e in filtered.events] == [
                (run_pb2.EVENT_TYPE_ADDED, first.run_id),
                (run_pb2.EVENT_TYPE_DELETED, first.run_id),
                (run_pb2.EVENT_TYPE_ADDED, second.run_id),
            ]

            # 4. From now, filtered to nothing: it receives nothing before the signal, so
            #    it must be told to resume from where it started.
            silent = Watch(
                "silent",
                stub.WatchRuns(pb.WatchRunsRequest(thread_id="nobody")),
                head_revision + 1,
            )
            # Waits on active runs: attached to a CANCEL-mode run, and unattached.
            attached = stub.WaitRun(
                pb.WaitRunRequest(run_id=waited.run_id, attach=True), timeout=30
            )
            unattached = stub.WaitRun(
                pb.WaitRunRequest(run_id=second.run_id, attach=False), timeout=30
            )
            # A call behind them on the same connection: the server has received them.
            got = await stub.GetRun(pb.GetRunRequest(run_id=waited.run_id), timeout=CALL_TIMEOUT)
            assert got.run.status == run_pb2.RUN_STATUS_PENDING
            assert not attached.done() and not unattached.done()

            # Health as a balancer follows it: a Watch stream pushes each status change.
            health = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=RUN_CONTROL_SERVICE)
            )
            assert (await _next_health(health)) == SERVING

            server.proc.send_signal(signum)
            exiting = asyncio.ensure_future(server.proc.wait())

            # The drain begins with NOT_SERVING, before any stream or wait is ended.
            assert (await _next_health(health)) == NOT_SERVING
            # A balancer that saw it goes away; an open health stream would otherwise
            # hold the server for the whole grace period like any in-flight call.
            health.cancel()

            async with asyncio.timeout(EXIT_TIMEOUT):
                for watch in (everything, filtered, stalled, silent):
                    error = await watch.read_to_error()
                    assert_shutting_down(error, watch.expected_resume - 1, watch.name)
                for name, call in (("attached", attached), ("unattached", unattached)):
                    with pytest.raises(grpc.aio.AioRpcError) as ended:
                        await call
                    # Waits report the store revision at shutdown.
                    assert_shutting_down(from_grpc_error(ended.value), head_revision, name)
            # Every stream ended where its client stood: nothing was skipped.
            assert everything.revisions[-1] == filtered.revisions[-1] == head_revision
            replayed = [m.revision for m in stalled.messages if not m.progress_only]
            assert replayed == list(range(1, len(replayed) + 1))
            assert replayed[-1] < head_revision, "the stalled stream was not behind"
            assert silent.messages == [] or all(m.progress_only for m in silent.messages)

            # Asked now, health is NOT_SERVING, or the server is already gone (which a
            # client sees as UNAVAILABLE); never SERVING again.
            try:
                status = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as gone:
                assert gone.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert status.status == NOT_SERVING

            # New calls are refused: SHUTTING_DOWN while draining, or no server at all.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateRun(pb.CreateRunRequest(thread_id="late"), timeout=CALL_TIMEOUT)
            late = from_grpc_error(refused.value)
            assert late.code == grpc.StatusCode.UNAVAILABLE
            assert late.reason in ("SHUTTING_DOWN", "")

        assert await asyncio.wait_for(exiting, EXIT_TIMEOUT) == 0
        assert await server.stdout_rest == b"", "stdout carries only the listening line"
        err = await server.stderr
        assert b"Traceback" not in err, err.decode()


# --- in process: what the exited process can no longer show ------------------------------


async def test_drain_ends_streams_and_waits_and_leaves_the_attached_run_running() -> None:
    async with serve_in_process(settings=Settings(grace_period=GRACE)) as server:
        stub, manager = server.stub, server.manager
        attached_run = await _create(stub, "t1")  # on_disconnect CANCEL (the default)
        continue_run = await _create(stub, "t2", on_disconnect=run_pb2.DISCONNECT_MODE_CONTINUE)
        watch = Watch("w", stub.WatchRuns(pb.WatchRunsRequest(send_initial=True)), 0)
        await watch.read_until(lambda m: m.end_of_initial_set)
        waits = [
            stub.WaitRun(pb.WaitRunRequest(run_id=attached_run.run_id, attach=True), timeout=30),
            stub.WaitRun(pb.WaitRunRequest(run_id=continue_run.run_id, attach=True), timeout=30),
            stub.WaitRun(pb.WaitRunRequest(run_id=attached_run.run_id), timeout=30),
        ]
        await until(lambda: manager.waiters.waiter_count == 3, "the waits are registered")
        revision = await manager.revision()

        await server.server.begin_drain()

        assert_shutting_down(await watch.read_to_error(), revision, "watch")
        for call in waits:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await call
            assert_shutting_down(from_grpc_error(ended.value), revision, "wait")
        # Ending a wait on shutdown is not its caller going away: nothing is cancelled.
        await manager.wait_detach_cancels()
        for run in (attached_run, continue_run):
            kept = await manager.get_run(run.run_id)
            assert kept.status is RunStatus.PENDING
            assert kept.cancel_reason is None
        assert await manager.revision() == revision
        assert manager.watch_hub.count == 0
        assert (manager.waiters.count, manager.waiters.waiter_count) == (0, 0)
