"""A watch that survives reconnects: the client-go informer pattern over WatchRuns.

It remembers the last revision it delivered. After UNAVAILABLE (server restart,
draining replica, network) or a stream the server ended without an error, it
reconnects with `start_revision = last + 1` after a backoff, so the caller sees every
change exactly once. After REVISION_COMPACTED (it fell behind the server's history)
it re-lists — a consistent snapshot taken at one revision with `send_initial` — hands
the caller a `Resynced` item holding the complete current set, and continues from the
snapshot's revision. An initial set (`send_initial`) cut off half way is completed the
same way: the rest cannot be resumed, so a `Resynced` with the whole set follows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ._models import EventType, Run, RunStatus
from .errors import RevisionCompacted, RunControlError, ShuttingDown, from_grpc_error
from .v1 import run_control_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of one run, as seen through the watch's filter."""

    type: EventType
    run: Run
    prev_status: RunStatus | None
    revision: int


@dataclass(frozen=True, slots=True)
class Bookmark:
    """Everything up to `revision` has been delivered.

    `end_of_initial_set` marks the end of the runs sent because of `send_initial`;
    otherwise it is a progress message (only delivered with `bookmarks=True`).
    """

    revision: int
    end_of_initial_set: bool = False


FELL_BEHIND = "the watch fell behind the server's history"


@dataclass(frozen=True, slots=True)
class Resynced:
    """The watch fell behind the server's history, or reached a server that lost its
    state (an in-memory server that restarted), and re-listed.

    `runs` is the complete set of matching runs at `revision`: replace any state built
    from earlier events with it. Events continue from `revision + 1`. `reason` says why.
    """

    revision: int
    runs: tuple[Run, ...]
    reason: str = FELL_BEHIND


WatchItem = WatchEvent | Bookmark | Resynced

# Initial metadata the server sends on every WatchRuns stream: its store's identity.
STORE_ID_HEADER = "runcontrol-store-id"
RESTARTED = "server restarted; state was in memory"


async def _store_id(call: Any) -> str | None:
    """The store identity the stream's server announced (None: it announced none)."""
    initial_metadata = getattr(call, "initial_metadata", None)
    if initial_metadata is None:
        return None
    try:
        metadata = await initial_metadata()
    except grpc.aio.AioRpcError:
        return None  # the call failed before any metadata: its error tells the rest
    for key, value in metadata or ():
        if key == STORE_ID_HEADER:
            return str(value)
    return None


StreamOpener = Callable[[pb.WatchRunsRequest], Any]


def _event(message: pb.RunEvent) -> WatchEvent:
    return WatchEvent(
        EventType(message.type),
        Run.from_proto(message.run),
        RunStatus(message.prev_status) if message.prev_status else None,
        message.revision,
    )


async def resuming_watch(
    open_stream: StreamOpener,
    request: pb.WatchRunsRequest,
    *,
    bookmarks: bool = False,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
    max_reconnects: int | None = None,
    current_revision: Callable[[], Awaitable[int]] | None = None,
) -> AsyncIterator[WatchItem]:
    """Yield watch items forever, reconnecting and resyncing as described above.

    Reconnects back off exponentially from `initial_backoff` to `max_backoff` seconds,
    both after UNAVAILABLE and after a stream the server ended without an error (so a
    server or proxy that keeps closing streams is not hammered); a message received
    resets the backoff. `max_reconnects` bounds consecutive reconnects that received
    nothing (None: no bound); the error that ends the watch is raised as a typed
    `RunControlError`.

    A watch "from now" (no `start_revision`, no `send_initial`) is pinned to a revision
    before its first stream opens when `current_revision` is given (a read returning
    the store revision, e.g. ListRuns), so an interruption before the first message
    loses nothing either. Without it, the position comes from the first message, a
    bookmark or the resume revision of SHUTTING_DOWN, and an interruption of another
    kind before any of these resumes "from now" again.
    """
    if max_reconnects is not None and max_reconnects < 0:
        raise ValueError("max_reconnects must be at least 0")
    # The last revision whose changes were all delivered (None: not known yet).
    last: int | None = (
        request.start_revision - 1
        if request.start_revision > 0 and not request.send_initial
        else None
    )
    # The caller asked for the initial set and has not received all of it yet.
    initial_pending = request.send_initial
    resync = False
    resync_reason = FELL_BEHIND
    store_id: str | None = None  # the identity of the store the positions refer to
    backoff = initial_backoff
    failures = 0
    while True:
        attempt = pb.WatchRunsRequest()
        attempt.CopyFrom(request)
        snapshot: list[Run] | None = [] if resync else None
        initial_sent = False  # part of the caller's initial set went out on this attempt
        call: Any = None
        error: RunControlError
        cause: BaseException | None = None
        try:
            try:
                if resync or initial_pending:
                    attempt.start_revision, attempt.send_initial = 0, True
                else:
                    if last is None and current_revision is not None:
                        last = await current_revision()  # pin "from now"
                    # None: from now (start_revision 0).
                    attempt.start_revision = 0 if last is None else last + 1
                    attempt.send_initial = False
                call = open_stream(attempt)
                announced = await _store_id(call)
                if announced is not None:
                    if store_id is not None and announced != store_id and not resync:
                        # Another store (an in-memory server that restarted): the
                        # revisions held here mean nothing there. Re-list instead.
                        log.warning("%s; re-listing the watched runs", RESTARTED)
                        store_id, resync, resync_reason = announced, True, RESTARTED
                        initial_pending = False
                        call.cancel()
                        continue
                    store_id = announced
                async for message in call:
                    failures, backoff = 0, initial_backoff
                    if snapshot is not None:  # collecting a resync's snapshot
                        snapshot.extend(Run.from_proto(e.run) for e in message.events)
                        if message.end_of_initial_set:
                            resync, last = False, message.revision
                            yield Resynced(message.revision, tuple(snapshot), resync_reason)
                            snapshot = None
                            resync_reason = FELL_BEHIND
                        continue
                    if initial_pending:
                        for event in message.events:
                            initial_sent = True
                            yield _event(event)
                        if message.end_of_initial_set:
                            initial_pending, last = False, message.revision
                            yield Bookmark(message.revision, end_of_initial_set=True)
                        continue
                    for event in message.events:
                        yield _event(event)
                    if message.progress_only and bookmarks:
                        yield Bookmark(message.revision)
                    last = message.revision
            except grpc.aio.AioRpcError as rpc_error:
                error, cause = from_grpc_error(rpc_error), rpc_error
                if isinstance(error, RevisionCompacted):
                    log.info("watch fell behind history (%s); re-listing", error.message)
                    resync = True
                    continue
                if error.code is not grpc.StatusCode.UNAVAILABLE:
                    raise error from rpc_error
                resume = error.resume_revision if isinstance(error, ShuttingDown) else None
                if resume is not None and not (resync or initial_pending):
                    # Everything before `resume` that matched was delivered: this also
                    # anchors a watch "from now" that has not received anything yet.
                    last = max(last or 0, resume - 1)
            else:
                error = RunControlError(
                    grpc.StatusCode.UNAVAILABLE, "the server ended the watch stream"
                )
        finally:
            if call is not None:
                call.cancel()
        if initial_pending and initial_sent:
            # Part of the initial set was delivered: the rest cannot be resumed, so
            # hand the caller a complete set instead.
            initial_pending, resync = False, True
        failures += 1
        if max_reconnects is not None and failures > max_reconnects:
            raise error from cause
        log.info("watch interrupted (%s); resuming after %.2fs", error, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
