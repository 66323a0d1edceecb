"""What each `runctl` command does: call the server, print the outcome, choose the exit code.

`cli` parses the arguments (its table of commands names one function here per command)
and maps errors to exit codes; `_cli_format` formats (pure functions). Every command
takes a `Context` (the parsed arguments, a clock for relative times, the channel
security) and returns an exit code, or raises `Failure` (a message for stderr and an
exit code) or `RunControlError` (mapped by `cli.main`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _auth
from . import _cli_format as fmt
from ._client import AsyncClient, Client
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from ._requests import CALL_METADATA, channel_options, deadline
from ._watch import Bookmark, Resynced, WatchEvent, WatchItem, resuming_watch
from .errors import RunNotFound, translated_errors
from .v1 import run_control_pb2 as pb
from .v1 import run_control_pb2_grpc

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_RUN_ERROR = 5
EXIT_RUN_TIMEOUT = 6
EXIT_RUN_INTERRUPTED = 7
EXIT_INTERRUPTED = 130

# `wait`: how a finished run that did not succeed ends the command.
_RUN_FAILED_EXIT = {
    RunStatus.ERROR: EXIT_RUN_ERROR,
    RunStatus.TIMEOUT: EXIT_RUN_TIMEOUT,
    RunStatus.INTERRUPTED: EXIT_RUN_INTERRUPTED,
}


# --- context, output, the one-call commands ----------------------------------------------


class Failure(Exception):
    """A command outcome that ends with a message on stderr and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Context:
    args: argparse.Namespace
    now: Callable[[], datetime]
    security: _auth.ChannelSecurity

    @property
    def output(self) -> str:
        value: str = self.args.output
        return value

    @property
    def call_timeout(self) -> float | None:
        value: float = self.args.timeout
        return value or None


def out(line: str = "") -> None:
    print(line, flush=True)


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_runs(ctx: Context, runs: Sequence[Run]) -> None:
    if ctx.output == "json":
        for run in runs:
            out(fmt.run_json(run))
    else:
        for line in fmt.runs_table(runs, ctx.now()):
            out(line)


def _client(ctx: Context) -> Client:
    s = ctx.security
    return Client(
        ctx.args.addr,
        timeout=ctx.call_timeout,
        token=s.token,
        root_certificates=s.root_certificates,
        client_certificate=s.client_certificate,
        client_key=s.client_key,
    )


def create_run(ctx: Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        handle = client.create_run(
            a.thread_id,
            assistant_id=a.assistant_id,
            on_disconnect=DisconnectMode[a.on_disconnect.upper()] if a.on_disconnect else None,
            multitask_strategy=MultitaskStrategy[a.strategy.upper()] if a.strategy else None,
            metadata=a.metadata,
            kwargs=a.kwargs,
            request_id=a.request_id,
            run_timeout=a.run_timeout,
        )
    print_runs(ctx, [handle.run])
    creation = handle.creation
    if creation is not None:
        if creation.replayed:
            note("note: replayed: this request_id already created the run")
        if creation.interrupted_runs:
            ids = ", ".join(r.run_id for r in creation.interrupted_runs)
            note(f"note: interrupted: {ids}")
        if creation.queued_behind_run_ids:
            note(f"note: queued behind: {', '.join(creation.queued_behind_run_ids)}")
    return EXIT_OK


def get_run(ctx: Context) -> int:
    with _client(ctx) as client:
        run = client.fetch_run(ctx.args.run_id)
    print_runs(ctx, [run])
    return EXIT_OK


def _statuses(names: Iterable[str] | None) -> list[RunStatus]:
    return [RunStatus[name.upper()] for name in names or ()]


def list_runs(ctx: Context) -> int:
    a = ctx.args
    limit: int | None = a.limit
    page_size: int | None = a.page_size
    if page_size is None and limit:
        page_size = min(limit, 1000)
    runs: list[Run] = []
    if limit != 0:
        with _client(ctx) as client:
            for run in client.list_runs(
                thread_id=a.thread, statuses=_statuses(a.status), page_size=page_size or 0
            ):
                runs.append(run)
                if limit is not None and len(runs) >= limit:
                    break
    if runs or ctx.output == "table":
        print_runs(ctx, runs)
    if not runs and ctx.output == "table":
        note("no runs found")
    return EXIT_OK


def cancel_run(ctx: Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, cancelled = client.cancel_run(
            a.run_id,
            action=CancelAction[a.action.upper()] if a.action else None,
            reason=a.reason,
        )
    print_runs(ctx, [run])
    if not cancelled:
        note(f"note: not cancelled by this call: the run is {run.status.name.lower()}")
    return EXIT_OK


def set_status(ctx: Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, changed = client.set_status(
            a.run_id,
            RunStatus[a.status.upper()],
            error=a.error,
            worker_id=a.worker_id,
            expected_mod_revision=a.expected_mod_revision,
        )
    print_runs(ctx, [run])
    if not changed:
        note("note: unchanged: the run was already in that state")
    return EXIT_OK


def delete_run(ctx: Context) -> int:
    with _client(ctx) as client:
        run = client.delete_run(ctx.args.run_id)
    print_runs(ctx, [run])
    return EXIT_OK


def wait_run(ctx: Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, done = client.wait_run(a.run_id, timeout=a.wait_timeout, attach=a.attach)
    print_runs(ctx, [run])
    status = run.status.name.lower()
    if not done:
        raise Failure(
            f"error: wait timed out: run {run.run_id} is still {status}", EXIT_WAIT_TIMEOUT
        )
    failed = _RUN_FAILED_EXIT.get(run.status)
    if failed is not None:
        detail = " ".join((run.error or run.cancel_reason or "").split())  # one line
        raise Failure(
            f"error: run {run.run_id} finished {status}" + (f": {detail}" if detail else ""),
            failed,
        )
    return EXIT_OK


def check_health(ctx: Context) -> int:
    a = ctx.args
    with ctx.security.channel(a.addr, ()) as channel, translated_errors():
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=a.service), timeout=deadline(ctx.call_timeout)
        )
    status = str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    if ctx.output == "json":
        out(json.dumps({"address": a.addr, "service": a.service, "status": status}))
    else:
        for line in fmt.align(
            [("ADDRESS", "SERVICE", "STATUS"), (a.addr, a.service or "-", status)]
        ):
            out(line)
    if status != "SERVING":
        raise Failure(f"error: server at {a.addr} is {status}")
    return EXIT_OK


# --- watch: a resuming stream, reconnects noted on stderr, --max-events in revisions ------


async def _wait_connected(channel: grpc.aio.Channel, addr: str, limit: float | None) -> None:
    """Fail fast when nothing listens at `addr` (a watch would otherwise wait forever)."""

    async def connect() -> None:
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise Failure(f"error: cannot reach runcontrol server at {addr}")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    try:
        async with asyncio.timeout(limit):
            await connect()
    except TimeoutError:
        raise Failure(
            f"error: cannot reach runcontrol server at {addr} (not connected after {limit:g}s)"
        ) from None


# Reconnect to a server that came back within ~1s instead of gRPC's default of up to
# 120s between connection attempts.
_WATCH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _Streams:
    """Opens the watch's WatchRuns streams for `resuming_watch` and watches over them.

    * Reconnects: a stream that ended with UNAVAILABLE or without an error means the
      connection was lost; each following open is a reconnect attempt, noted on stderr
      (`resuming_watch` backs off between them, up to 5s). A message received means
      connected again. The streams do not wait for the channel to be ready, so an
      attempt against a server that is gone fails at once and is counted and noted.
    * Give-up: while disconnected, `scope` (an `asyncio.timeout`) is armed to expire
      `reconnect_timeout` seconds after the connection was lost.
    * Revision boundaries (`ends_revision`): one message holds one revision's events,
      so `pending` (the events of the current message not yet handed to the caller) is
      0 at a revision's end; the initial set of `send_initial` is one revision spread
      over messages until `end_of_initial_set`, so `in_initial` is True while it is
      incomplete.
    """

    def __init__(
        self,
        stub: run_control_pb2_grpc.RunControlAsyncStub,
        addr: str,
        reconnect_timeout: float | None,
        call_timeout: float | None,
    ) -> None:
        self._stub = stub
        self._call_timeout = call_timeout
        self._addr = addr
        self._reconnect_timeout = reconnect_timeout
        self.scope: asyncio.Timeout | None = None
        self.progress_interval: float | None = None
        self._lost = False
        self._attempt = 0
        self.pending = 0
        self.in_initial = False

    def disconnected(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._reconnect_timeout is not None and self.scope is not None:
            loop = asyncio.get_running_loop()
            self.scope.reschedule(loop.time() + self._reconnect_timeout)

    def connected(self) -> None:
        if self._lost:
            note(f"reconnected to {self._addr}")
        self._lost = False
        self._attempt = 0
        if self.scope is not None:
            self.scope.reschedule(None)

    def open(self, request: pb.WatchRunsRequest) -> _Stream:
        if self._lost:
            self._attempt += 1
            note(f"reconnecting to {self._addr} (attempt {self._attempt})")
        if self.progress_interval is not None:
            # Progress messages while nothing changes: proof of a reconnect in time.
            request.progress_interval.FromNanoseconds(int(self.progress_interval * 1e9))
        call = self._stub.WatchRuns(request, metadata=CALL_METADATA)  # exact payloads
        return _Stream(self, call, request.send_initial)

    def ends_revision(self, item: WatchItem) -> bool:
        """Whether `item`, just handed to the caller, is the last of its revision.

        Called once per item, in order: it counts down `pending`."""
        if isinstance(item, WatchEvent):
            self.pending -= 1
            return self.pending <= 0 and not self.in_initial
        if isinstance(item, Resynced):
            return True  # a complete set at one revision
        return isinstance(item, Bookmark) and item.end_of_initial_set

    async def current_revision(self) -> int:
        response = await self._stub.ListRuns(
            pb.ListRunsRequest(page_size=1),
            timeout=deadline(self._call_timeout),
            metadata=CALL_METADATA,
        )
        revision: int = response.revision
        return revision


class _Stream:
    """One WatchRuns call as `resuming_watch` iterates it, reporting to `_Streams`."""

    def __init__(self, owner: _Streams, call: Any, send_initial: bool) -> None:
        self._owner = owner
        self._call = call
        self._initial = send_initial

    def cancel(self) -> None:
        self._call.cancel()

    async def initial_metadata(self) -> Any:
        """The call's initial metadata (`resuming_watch` reads the store identity)."""
        return await self._call.initial_metadata()

    async def __aiter__(self) -> Any:
        owner = self._owner
        try:
            async for message in self._call:
                owner.connected()
                if self._initial and message.end_of_initial_set:
                    self._initial = False
                owner.in_initial = self._initial
                owner.pending = len(message.events)
                yield message
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                owner.disconnected()
            raise
        owner.disconnected()  # the server ended the stream: `resuming_watch` reconnects


async def _note_missing_runs(client: AsyncClient, run_ids: Sequence[str]) -> None:
    """Say once which of the watched run ids do not exist (yet): the watch goes on."""

    async def exists(run_id: str) -> bool:
        try:
            await client.fetch_run(run_id)
        except RunNotFound:
            return False
        return True

    unique = list(dict.fromkeys(run_ids))
    found = await asyncio.gather(*(exists(run_id) for run_id in unique))
    for run_id, present in zip(unique, found, strict=True):
        if not present:
            note(f"note: run {run_id} does not exist (yet); watching for it to be created")


def _watch_request(a: argparse.Namespace) -> pb.WatchRunsRequest:
    return pb.WatchRunsRequest(
        thread_id=a.thread or "",
        run_ids=a.run_id or (),
        statuses=[s.value for s in _statuses(a.status)],
        start_revision=a.start_revision,
        send_initial=a.send_initial,
    )


async def _watch(ctx: Context) -> int:
    a = ctx.args
    reconnect_timeout: float | None = a.reconnect_timeout
    options = channel_options(True, _WATCH_CHANNEL_OPTIONS)
    channel = ctx.security.aio_channel(a.addr, options)
    try:
        await _wait_connected(channel, a.addr, ctx.call_timeout)
        client = AsyncClient(channel=channel, timeout=ctx.call_timeout)
        if a.run_id:
            await _note_missing_runs(client, a.run_id)
        streams = _Streams(client.stub, a.addr, reconnect_timeout, ctx.call_timeout)
        if reconnect_timeout is not None:
            streams.progress_interval = min(max(reconnect_timeout / 2, 0.1), 5.0)
        stream = resuming_watch(
            streams.open, _watch_request(a), current_revision=streams.current_revision
        )
        if ctx.output == "table":
            out(fmt.watch_header())
        seen = 0
        try:
            async with asyncio.timeout(None) as scope:
                streams.scope = scope
                async for item in stream:
                    for line in fmt.watch_item_lines(item, ctx.output):
                        out(line)
                    if isinstance(item, WatchEvent | Resynced):
                        seen += 1  # a resynced set counts as one event
                    # --max-events stops only at a revision's end: never half a change.
                    if streams.ends_revision(item) and a.max_events and seen >= a.max_events:
                        break
        except TimeoutError:
            raise Failure(
                f"error: gave up reconnecting to {a.addr}: unreachable for "
                f"{reconnect_timeout:g}s (--reconnect-timeout)"
            ) from None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    finally:
        await channel.close()
    return EXIT_OK


def watch_runs(ctx: Context) -> int:
    return asyncio.run(_watch(ctx))
