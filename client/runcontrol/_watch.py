"""A watch that survives reconnects: the client-go informer pattern over WatchRuns.

It remembers the last revision it delivered. After UNAVAILABLE (server restart,
draining replica, network) it reconnects with `start_revision = last + 1`, so the
caller sees every change exactly once. After REVISION_COMPACTED (it fell behind the
server's history) it re-lists — a consistent snapshot taken at one revision with
`send_initial` — hands the caller a `Resynced` item holding the complete current set,
and continues from the snapshot's revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ._models import EventType, Run, RunStatus
from .errors import RevisionCompacted, from_grpc_error
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


@dataclass(frozen=True, slots=True)
class Resynced:
    """The watch fell behind the server's history and re-listed.

    `runs` is the complete set of matching runs at `revision`: replace any state built
    from earlier events with it. Events continue from `revision + 1`.
    """

    revision: int
    runs: tuple[Run, ...]


WatchItem = WatchEvent | Bookmark | Resynced
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
) -> AsyncIterator[WatchItem]:
    """Yield watch items forever, reconnecting and resyncing as described above.

    `max_reconnects` bounds consecutive failed reconnects (None: no bound); the error
    that ends the watch is raised as a typed `RunControlError`.
    """
    last: int | None = request.start_revision - 1 if request.start_revision > 0 else None
    resync = False
    backoff = initial_backoff
    failures = 0
    while True:
        attempt = pb.WatchRunsRequest()
        attempt.CopyFrom(request)
        if resync:
            attempt.start_revision, attempt.send_initial = 0, True
        elif last is not None:
            attempt.start_revision, attempt.send_initial = last + 1, False
        snapshot: list[Run] | None = [] if resync else None
        call = open_stream(attempt)
        try:
            async for message in call:
                failures, backoff = 0, initial_backoff
                if snapshot is not None:  # collecting a resync's snapshot
                    snapshot.extend(Run.from_proto(e.run) for e in message.events)
                    if message.end_of_initial_set:
                        resync, last = False, message.revision
                        yield Resynced(message.revision, tuple(snapshot))
                        snapshot = None
                    continue
                for event in message.events:
                    yield _event(event)
                if message.end_of_initial_set:
                    yield Bookmark(message.revision, end_of_initial_set=True)
                elif message.progress_only and bookmarks:
                    yield Bookmark(message.revision)
                last = message.revision
            # The server ended the stream without an error: reconnect and resume.
        except grpc.aio.AioRpcError as rpc_error:
            error = from_grpc_error(rpc_error)
            if isinstance(error, RevisionCompacted):
                log.info("watch fell behind history (%s); re-listing", error.message)
                resync = True
                continue
            if error.code is not grpc.StatusCode.UNAVAILABLE:
                raise error from rpc_error
            failures += 1
            if max_reconnects is not None and failures > max_reconnects:
                raise error from rpc_error
            log.info("watch interrupted (%s); resuming after %.1fs", error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        finally:
            call.cancel()
