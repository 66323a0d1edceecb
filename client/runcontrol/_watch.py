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
from dataclasses import dataclass, field
from enum import Enum
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
    except grpc.RpcError:
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


class Phase(Enum):
    """What the watch's next (or current) stream is for."""

    FROM_NOW = "from now"  # no position yet: the stream starts at the server's "now"
    INITIAL = "initial"  # the caller's initial set (send_initial), not all delivered yet
    STREAMING = "streaming"  # changes after `Position.revision`
    RESYNCING = "resyncing"  # a re-list: collect the snapshot, then hand it over whole


@dataclass(slots=True)
class Position:
    """Where the watch stands, in the revisions of one store."""

    revision: int = 0  # every matching change up to here was delivered (STREAMING)
    store_id: str | None = None  # the store those revisions belong to (None: not known)


@dataclass(slots=True)
class _WatchState:
    """The watch's phase and position, and every transition between phases.

    FROM_NOW ──pinned, first message, SHUTTING_DOWN's resume revision──► STREAMING
    INITIAL ──end of the initial set──► STREAMING (a Bookmark)
    INITIAL ──interrupted after part of the set went out──► RESYNCING
    any ──REVISION_COMPACTED, or another store answers──► RESYNCING
    RESYNCING ──end of the snapshot──► STREAMING (a Resynced)
    """

    phase: Phase
    position: Position
    reason: str = FELL_BEHIND  # why RESYNCING re-lists
    snapshot: list[Run] = field(default_factory=list)  # RESYNCING: listed on this stream
    initial_started: bool = False  # INITIAL: part of the set went out on this stream

    @classmethod
    def starting(cls, request: pb.WatchRunsRequest) -> _WatchState:
        if request.send_initial:
            return cls(Phase.INITIAL, Position())
        if request.start_revision > 0:
            return cls(Phase.STREAMING, Position(request.start_revision - 1))
        return cls(Phase.FROM_NOW, Position())

    def open(self, request: pb.WatchRunsRequest) -> pb.WatchRunsRequest:
        """The request for the next stream (a new stream starts the phase's work over)."""
        attempt = pb.WatchRunsRequest()
        attempt.CopyFrom(request)
        self.snapshot, self.initial_started = [], False
        if self.phase in (Phase.INITIAL, Phase.RESYNCING):
            # A snapshot fixes its own revision: a start revision cannot go with it.
            attempt.start_revision, attempt.send_initial = 0, True
        else:
            streaming = self.phase is Phase.STREAMING
            attempt.start_revision = self.position.revision + 1 if streaming else 0
            attempt.send_initial = False
        return attempt

    def pin(self, revision: int) -> None:
        """A watch "from now" starts after `revision` (read before its first stream)."""
        self._streaming_after(revision)

    def store_changed(self, announced: str | None) -> bool:
        """Note the store the new stream's server announced; True when it is another
        store than the position's (an in-memory server that restarted): the revisions
        held here mean nothing there, so the watch re-lists instead."""
        if announced is None:
            return False
        known, self.position.store_id = self.position.store_id, announced
        if known is None or known == announced or self.phase is Phase.RESYNCING:
            return False
        self._resync(RESTARTED)
        return True

    def receive(self, message: pb.WatchRunsResponse, bookmarks: bool) -> list[WatchItem]:
        """What `message` hands the caller, moving the phase on."""
        if self.phase is Phase.RESYNCING:
            # Held back until complete: the caller replaces its state with the whole set.
            self.snapshot.extend(Run.from_proto(event.run) for event in message.events)
            if not message.end_of_initial_set:
                return []
            resynced = Resynced(message.revision, tuple(self.snapshot), self.reason)
            self._streaming_after(message.revision)
            return [resynced]
        items: list[WatchItem] = [_event(event) for event in message.events]
        if self.phase is Phase.INITIAL:
            self.initial_started = self.initial_started or bool(items)
            if message.end_of_initial_set:
                items.append(Bookmark(message.revision, end_of_initial_set=True))
                self._streaming_after(message.revision)
            return items
        if message.progress_only and bookmarks:
            items.append(Bookmark(message.revision))
        self._streaming_after(message.revision)  # progress messages move it too
        return items

    def fell_behind(self) -> None:
        """REVISION_COMPACTED: the position left the server's history."""
        if self.phase is not Phase.RESYNCING:  # already re-listing: keep its reason
            self._resync(FELL_BEHIND)

    def interrupted(self, error: RunControlError) -> None:
        """The stream ended with UNAVAILABLE, or without an error."""
        resume = error.resume_revision if isinstance(error, ShuttingDown) else None
        if resume is not None and self.phase in (Phase.FROM_NOW, Phase.STREAMING):
            # Everything before `resume` that matched was delivered: this also anchors
            # a watch "from now" that has not received anything yet.
            self._streaming_after(max(self.position.revision, resume - 1))
        elif self.phase is Phase.INITIAL and self.initial_started:
            # The rest of a set cannot be resumed: hand the caller a complete one instead.
            self._resync(FELL_BEHIND)

    def _streaming_after(self, revision: int) -> None:
        self.phase, self.position.revision, self.reason = Phase.STREAMING, revision, FELL_BEHIND

    def _resync(self, reason: str) -> None:
        self.phase, self.reason = Phase.RESYNCING, reason


@dataclass(slots=True)
class _Reconnects:
    """Exponential backoff between reconnects, and the bound on failures in a row."""

    initial: float
    maximum: float
    limit: int | None
    delay: float = field(init=False)
    in_a_row: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError("max_reconnects must be at least 0")
        self.delay = self.initial

    def reset(self) -> None:
        """A message arrived: the connection works again."""
        self.delay, self.in_a_row = self.initial, 0

    def next_delay(self) -> float | None:
        """How long to wait before the next reconnect (None: the bound is reached)."""
        self.in_a_row += 1
        if self.limit is not None and self.in_a_row > self.limit:
            return None
        delay, self.delay = self.delay, min(self.delay * 2, self.maximum)
        return delay


# What a stream the server ended without an error counts as: an interruption.
ENDED = "the server ended the watch stream"


async def resuming_watch(
    open_stream: StreamOpener,
    request: pb.WatchRunsRequest,
    *,
    bookmarks: bool = False,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
    max_reconnects: int | None = None,
    current_revision: Callable[[], Awaitable[int]] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[WatchItem]:
    """Yield watch items forever, reconnecting and resyncing as described above.

    Reconnects back off exponentially from `initial_backoff` to `max_backoff` seconds,
    both after UNAVAILABLE and after a stream the server ended without an error (so a
    server or proxy that keeps closing streams is not hammered); a message received
    resets the backoff. `max_reconnects` bounds consecutive reconnects that received
    nothing (None: no bound); the error that ends the watch is raised as a typed
    `RunControlError`. `sleep` waits out the backoff (tests pass their own).

    A watch "from now" (no `start_revision`, no `send_initial`) is pinned to a revision
    before its first stream opens when `current_revision` is given (a read returning
    the store revision, e.g. ListRuns), so an interruption before the first message
    loses nothing either. Without it, the position comes from the first message, a
    bookmark or the resume revision of SHUTTING_DOWN, and an interruption of another
    kind before any of these resumes "from now" again.
    """
    reconnects = _Reconnects(initial_backoff, max_backoff, max_reconnects)
    state = _WatchState.starting(request)
    while True:
        call: Any = None
        error: RunControlError
        cause: BaseException | None = None
        try:
            try:
                if state.phase is Phase.FROM_NOW and current_revision is not None:
                    state.pin(await current_revision())
                call = open_stream(state.open(request))
                if state.store_changed(await _store_id(call)):
                    log.warning("%s; re-listing the watched runs", RESTARTED)
                    continue  # nothing failed: re-list at once
                async for message in call:
                    reconnects.reset()
                    for item in state.receive(message, bookmarks):
                        yield item
            except grpc.RpcError as rpc_error:  # aio, or a blocking stream (`_blocking`)
                error, cause = from_grpc_error(rpc_error), rpc_error
                if isinstance(error, RevisionCompacted):
                    log.info("watch fell behind history (%s); re-listing", error.message)
                    state.fell_behind()
                    continue  # the server is up and answered: re-list at once
                if error.code is not grpc.StatusCode.UNAVAILABLE:
                    raise error from rpc_error
            else:
                error = RunControlError(grpc.StatusCode.UNAVAILABLE, ENDED)
        finally:
            if call is not None:
                call.cancel()
        state.interrupted(error)
        delay = reconnects.next_delay()
        if delay is None:
            raise error from cause
        log.info("watch interrupted (%s); resuming after %.2fs", error, delay)
        await sleep(delay)
