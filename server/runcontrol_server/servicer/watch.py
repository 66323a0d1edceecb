"""WatchRuns: the request -> a domain `Watcher` -> pre-encoded `WatchRunsResponse` bytes.

Encode once: the `RunEvent` of one change as seen with one event type is the same
bytes for every watcher, so `EventEncoder` serializes it once and every stream builds
its `WatchRunsResponse` by concatenating wire bytes; the run inside is the record
encoded once per revision (`wire.RecordCache`), shared with every unary answer, and a
revision with one event (the usual case) is one shared response. WatchRuns is
therefore registered with a pass-through response serializer (`wire.add_to_server`);
clients see ordinary `WatchRunsResponse` messages.

The handler is a coroutine writing with `context.write` (grpc.aio's writer API for a
server stream), not an async generator: no generator to step per message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

from ..domain.manager import RunManager
from ..domain.model import Run
from ..domain.watch import EventType, WatchBatch, Watcher, WatchEvent, WatchFilter
from . import validation
from .convert import STATUS_FROM_PROTO, STATUS_TO_PROTO
from .limits import Limits
from .peers import PeerSlots
from .wire import FieldTags, RecordCache, encode_record, varint

_Context = grpc.aio.ServicerContext[Any, Any]

EVENT_TYPE_TO_PROTO: dict[EventType, run_pb2.EventType.ValueType] = {
    m: run_pb2.EventType.Value("EVENT_TYPE_" + m.name) for m in EventType
}
_STATUS_UNSPECIFIED = run_pb2.RunStatus.RUN_STATUS_UNSPECIFIED
# Initial metadata of every WatchRuns stream: the identity of the store it reads.
STORE_ID_HEADER = "runcontrol-store-id"
# The initial set is sent in messages of at most this many events (all at one revision).
INITIAL_CHUNK = 500
# Encoded batches kept for other watchers of the same revision. Watchers that are caught
# up all ask within one wake-up, so a modest bound serves the fan-out; a straggler that
# misses the cache just encodes again.
DEFAULT_CACHE_SIZE = 4096
# ... and at most this many bytes of them (one large run must not pin 4096 copies).
DEFAULT_CACHE_BYTES = 16 << 20

# WatchRunsResponse and RunEvent field tags, from their descriptors (see `FieldTags`).
_response_tags = FieldTags(pb.WatchRunsResponse.DESCRIPTOR)
_TAG_REVISION = _response_tags("revision")
_TAG_EVENT = _response_tags("events")
_END_OF_INITIAL_SET = _response_tags("end_of_initial_set") + b"\x01"
_PROGRESS_ONLY = _response_tags("progress_only") + b"\x01"
_response_tags.check_complete()
_event_tags = FieldTags(pb.RunEvent.DESCRIPTOR)
_EVENT_TYPE = _event_tags("type")
_EVENT_RUN = _event_tags("run")
_EVENT_PREV_STATUS = _event_tags("prev_status")
_EVENT_REVISION = _event_tags("revision")
_event_tags.check_complete()
_EVENT_TYPE_FIELD = {
    k: _EVENT_TYPE + varint(v) if v else b"" for k, v in EVENT_TYPE_TO_PROTO.items()
}


def encode_response(
    revision: int,
    events: Iterable[bytes] = (),
    *,
    end_of_initial_set: bool = False,
    progress_only: bool = False,
) -> bytes:
    """A serialized `WatchRunsResponse` from already serialized `RunEvent`s.

    Fields in number order and zero values omitted, exactly as protobuf writes them.
    """
    parts: list[bytes] = []
    if revision:
        parts += (_TAG_REVISION, varint(revision))
    for event in events:
        parts += (_TAG_EVENT, varint(len(event)), event)
    if end_of_initial_set:
        parts.append(_END_OF_INITIAL_SET)
    if progress_only:
        parts.append(_PROGRESS_ONLY)
    return b"".join(parts)


def encode_event(
    event_type: EventType,
    run: Run,
    prev_status: run_pb2.RunStatus.ValueType,
    revision: int,
    records: RecordCache | None = None,
) -> bytes:
    """A serialized `RunEvent` (the run's record from `records` when given)."""
    record = records.encode(run) if records is not None else encode_record(run)
    parts = [_EVENT_TYPE_FIELD[event_type], _EVENT_RUN, varint(len(record)), record]
    if prev_status:
        parts += (_EVENT_PREV_STATUS, varint(prev_status))
    if revision:
        parts += (_EVENT_REVISION, varint(revision))
    return b"".join(parts)


class EventEncoder:
    """Serialized `WatchRunsResponse`s of change batches, keyed by the revision and the
    events seen ((change index, event type) each), bounded by count and by bytes,
    least recently used out first.

    Shared by every stream of one servicer: ten thousand watchers that see one change
    the same way cost one serialization, and each of them a dict lookup, or less: the
    watchers of one filter deliver the very same batch object (the hub shares it), one
    after another, so the last batch encoded is recognized by identity. The runs inside
    come from the servicer's `RecordCache`, whose payload format (Structs or JSON text)
    is this encoder's: a servicer keeps one encoder per format.
    """

    def __init__(
        self,
        records: RecordCache | None = None,
        max_entries: int = DEFAULT_CACHE_SIZE,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._records = records if records is not None else RecordCache()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        # The last event batch encoded (held, so its identity cannot be reused) and its
        # message.
        self._last_batch: WatchBatch | None = None
        self._last_data = b""

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def size_bytes(self) -> int:
        """Bytes of cached responses."""
        return self._bytes

    @property
    def records(self) -> RecordCache:
        return self._records

    def _encode_event(self, event: WatchEvent) -> bytes:
        change = event.change
        prev = (
            STATUS_TO_PROTO[change.prev_status]
            if change.prev_status is not None
            else _STATUS_UNSPECIFIED
        )
        return encode_event(event.type, change.run, prev, event.revision, self._records)

    def encode_batch(self, batch: WatchBatch) -> bytes:
        if batch is self._last_batch:
            return self._last_data
        events = batch.events
        if not events or batch.end_of_initial_set or batch.progress_only:
            return encode_response(
                batch.revision,
                map(self._encode_event, events),
                end_of_initial_set=batch.end_of_initial_set,
                progress_only=batch.progress_only,
            )
        key: tuple[object, ...]
        if len(events) == 1:
            first = events[0]
            key = (batch.revision, first.revision, first.index, first.type)
        else:
            key = (batch.revision, *((e.revision, e.index, e.type) for e in events))
        cache = self._cache
        data = cache.get(key)
        if data is not None:
            cache.move_to_end(key)
        else:
            data = encode_response(batch.revision, map(self._encode_event, events))
            cache[key] = data
            self._bytes += len(data)
            while len(cache) > self._max_entries or (self._bytes > self._max_bytes and cache):
                _, dropped = cache.popitem(last=False)
                self._bytes -= len(dropped)
        self._last_batch, self._last_data = batch, data
        return data


# `frozenset(iterable)` builds a new empty set (216 B) each time; most filters leave
# both sets empty, and an open stream keeps its filter.
_NONE: frozenset[Any] = frozenset()


def watch_filter_of(request: pb.WatchRunsRequest) -> WatchFilter:
    return WatchFilter(
        thread_id=request.thread_id or None,
        run_ids=frozenset(request.run_ids) if request.run_ids else _NONE,
        statuses=(
            frozenset(STATUS_FROM_PROTO[s] for s in request.statuses) if request.statuses else _NONE
        ),
    )


async def watch_runs(
    request: pb.WatchRunsRequest,
    context: _Context,
    manager: RunManager,
    limits: Limits,
    encoder: EventEncoder,
    slots: PeerSlots,
) -> None:
    """The WatchRuns stream: writes serialized `WatchRunsResponse` messages to `context`.

    Every failure of the request or of the watch (bad input, REVISION_COMPACTED,
    LIMIT_EXCEEDED, SHUTTING_DOWN, anything unexpected) ends the stream through the one
    error table, once the watcher is unregistered; the watcher and the peer's slot
    (`slots`) are released on any exit, cancellation included. Failures of a write
    itself (the client went away, the server stopped) and cancellation are grpc's own
    and pass through unmapped, as when grpc wrote what a generator yielded.
    """
    if manager.store_id is not None:
        # Before anything else (errors included): a client that reconnects compares it
        # with the one it saw, to tell a server that lost its state from a resumable one.
        await context.send_initial_metadata(((STORE_ID_HEADER, manager.store_id),))
    failure: Exception | None
    # Released by hand, not by an ExitStack: an open stream holds what its handler
    # holds, and an ExitStack with its callbacks and a generator-based slot cost ~1.3
    # KiB per stream (tracemalloc; 13 MB for 10,000 streams).
    host: str | None = None
    watcher: Watcher | None = None
    try:
        try:
            validation.validate_watch_runs(request, limits)
            watch_filter = watch_filter_of(request)
            interval = (
                request.progress_interval.ToTimedelta().total_seconds()
                if request.HasField("progress_interval")
                else 0.0
            )
            # The peer's slot, then the server's (the registration): both limits are
            # checked before any work is done for the stream.
            host = slots.take(context.peer())
            watcher = await manager.watch(watch_filter, progress_interval=interval or None)
        except Exception as error:
            failure = error
        else:
            failure = await _start(request, context, manager, encoder, watcher)
            if failure is None:
                # The hot loop, per change: the batch shared by every watcher of this
                # filter, its once-encoded message, the write. Only the write is outside
                # the `try`: its failures, like cancellation, propagate unmapped.
                encode = encoder.encode_batch
                next_batch = watcher.__anext__
                write = context.write
                while True:
                    try:
                        message = encode(await next_batch())
                    except StopAsyncIteration:
                        break
                    except Exception as error:
                        failure = error
                        break
                    await write(message)
    finally:
        if watcher is not None:
            watcher.close()
        if host is not None:
            slots.give_back(host)
    # Raised once the watcher is unregistered; the handler's wrapper answers it from the
    # error table (see `wire.add_to_server`).
    if failure is not None:
        raise failure


async def _start(
    request: pb.WatchRunsRequest,
    context: _Context,
    manager: RunManager,
    encoder: EventEncoder,
    watcher: Watcher,
) -> Exception | None:
    """Position the watcher as the request asks and write the initial set if asked for.

    Returns the failure to answer (None: go on streaming). Only the writes are outside
    the `try`s: their failures, like cancellation, propagate unmapped.
    """
    initial: Iterator[bytes] | None = None
    try:
        if request.send_initial:
            watch_filter = watcher.filter
            runs, revision = await manager.snapshot(watch_filter.thread_id, watch_filter.run_ids)
            # Stream from right after the snapshot: together, one consistent view.
            await manager.seek(watcher, revision + 1)
            initial = _initial_messages(runs, revision, watch_filter, encoder.records)
        elif request.start_revision:
            await manager.seek(watcher, request.start_revision)
    except Exception as error:
        return error
    if initial is not None:
        while True:
            try:
                message = next(initial, None)  # encoded lazily, one message per write
            except Exception as error:
                return error
            if message is None:
                break
            await context.write(message)
        watcher.mark_sent()
    return None


def _initial_messages(
    runs: Iterable[Run], revision: int, watch_filter: WatchFilter, records: RecordCache
) -> Iterator[bytes]:
    """The initial set as ADDED events at `revision`, chunked, then the end marker."""
    chunk: list[bytes] = []
    for run in runs:
        if not watch_filter.matches(run):
            continue
        # Initial events carry the revision of the run's last change; the event is not
        # shared with other watchers (each initial set is its own), the record is.
        chunk.append(
            encode_event(EventType.ADDED, run, _STATUS_UNSPECIFIED, run.mod_revision, records)
        )
        if len(chunk) == INITIAL_CHUNK:
            yield encode_response(revision, chunk)
            chunk = []
    if chunk:
        yield encode_response(revision, chunk)
    yield encode_response(revision, end_of_initial_set=True)
