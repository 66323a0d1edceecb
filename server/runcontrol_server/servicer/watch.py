"""WatchRuns: the request -> a domain `Watcher` -> pre-encoded `WatchRunsResponse` bytes.

Encode once: the `RunEvent` of one change as seen with one event type is the same
bytes for every watcher, so `EventEncoder` serializes it once and every stream builds
its `WatchRunsResponse` by concatenating wire bytes. WatchRuns is therefore registered
with a pass-through response serializer (`add_to_server`); clients see ordinary
`WatchRunsResponse` messages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

from ..domain.manager import RunManager
from ..domain.model import Run
from ..domain.watch import EventType, WatchBatch, WatchEvent, WatchFilter
from . import validation
from .convert import STATUS_FROM_PROTO, STATUS_TO_PROTO, run_to_proto
from .errors import mapped_errors
from .limits import Limits

_Context = grpc.aio.ServicerContext[Any, Any]

EVENT_TYPE_TO_PROTO: dict[EventType, run_pb2.EventType.ValueType] = {
    m: run_pb2.EventType.Value("EVENT_TYPE_" + m.name) for m in EventType
}
_STATUS_UNSPECIFIED = run_pb2.RunStatus.RUN_STATUS_UNSPECIFIED
# The initial set is sent in messages of at most this many events (all at one revision).
INITIAL_CHUNK = 500
# Encoded events kept for other watchers of the same revision. Watchers that are caught
# up all ask within one wake-up, so a modest bound serves the fan-out; a straggler that
# misses the cache just encodes again.
DEFAULT_CACHE_SIZE = 4096

# WatchRunsResponse field tags (field number << 3 | wire type).
_TAG_REVISION = b"\x08"  # 1, varint
_TAG_EVENT = b"\x12"  # 2, length-delimited
_END_OF_INITIAL_SET = b"\x18\x01"  # 3 = true
_PROGRESS_ONLY = b"\x20\x01"  # 4 = true


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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
        parts += (_TAG_REVISION, _varint(revision))
    for event in events:
        parts += (_TAG_EVENT, _varint(len(event)), event)
    if end_of_initial_set:
        parts.append(_END_OF_INITIAL_SET)
    if progress_only:
        parts.append(_PROGRESS_ONLY)
    return b"".join(parts)


def encode_event(
    event_type: EventType, run: Run, prev_status: run_pb2.RunStatus.ValueType, revision: int
) -> bytes:
    message = pb.RunEvent(
        type=EVENT_TYPE_TO_PROTO[event_type], prev_status=prev_status, revision=revision
    )
    run_to_proto(run, message.run)
    return message.SerializeToString()


class EventEncoder:
    """Serialized `RunEvent`s keyed by (revision, change index, event type), LRU-bounded.

    Shared by every stream of one servicer: ten thousand watchers of one change cost
    one serialization.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[int, int, EventType], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def encode(self, event: WatchEvent) -> bytes:
        key = (event.revision, event.index, event.type)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        change = event.change
        prev = (
            STATUS_TO_PROTO[change.prev_status]
            if change.prev_status is not None
            else _STATUS_UNSPECIFIED
        )
        data = encode_event(event.type, change.run, prev, event.revision)
        self._cache[key] = data
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return data

    def encode_batch(self, batch: WatchBatch) -> bytes:
        return encode_response(
            batch.revision,
            (self.encode(event) for event in batch.events),
            end_of_initial_set=batch.end_of_initial_set,
            progress_only=batch.progress_only,
        )


def watch_filter_of(request: pb.WatchRunsRequest) -> WatchFilter:
    return WatchFilter(
        thread_id=request.thread_id or None,
        run_ids=frozenset(request.run_ids),
        statuses=frozenset(STATUS_FROM_PROTO[s] for s in request.statuses),
    )


async def watch_runs(
    request: pb.WatchRunsRequest,
    context: _Context,
    manager: RunManager,
    limits: Limits,
    encoder: EventEncoder,
) -> AsyncGenerator[bytes, None]:
    """The WatchRuns stream, as serialized `WatchRunsResponse` messages.

    Every failure (bad input, REVISION_COMPACTED, LIMIT_EXCEEDED, SHUTTING_DOWN) ends
    the stream through the one error table; the watcher is unregistered on any exit,
    cancellation included.
    """
    async with mapped_errors(context):
        validation.validate_watch_runs(request, limits)
        watch_filter = watch_filter_of(request)
        interval = (
            request.progress_interval.ToTimedelta().total_seconds()
            if request.HasField("progress_interval")
            else 0.0
        )
        # Registered first: the limit is checked before any work is done for the stream.
        with manager.watch_hub.watch(watch_filter, progress_interval=interval or None) as watcher:
            if request.send_initial:
                runs, revision = await manager.store.snapshot(
                    watch_filter.thread_id, watch_filter.run_ids
                )
                # Stream from right after the snapshot: together, one consistent view.
                watcher.seek(revision + 1)
                for message in _initial_messages(runs, revision, watch_filter):
                    yield message
                watcher.mark_sent()
            elif request.start_revision:
                watcher.seek(request.start_revision)
            async for batch in watcher:
                yield encoder.encode_batch(batch)


def _initial_messages(
    runs: Iterable[Run], revision: int, watch_filter: WatchFilter
) -> Iterable[bytes]:
    """The initial set as ADDED events at `revision`, chunked, then the end marker."""
    chunk: list[bytes] = []
    for run in runs:
        if not watch_filter.matches(run):
            continue
        # Initial events carry the revision of the run's last change; not shared with
        # other watchers (each initial set is its own), so not cached.
        chunk.append(encode_event(EventType.ADDED, run, _STATUS_UNSPECIFIED, run.mod_revision))
        if len(chunk) == INITIAL_CHUNK:
            yield encode_response(revision, chunk)
            chunk = []
    if chunk:
        yield encode_response(revision, chunk)
    yield encode_response(revision, end_of_initial_set=True)


def _identity(data: bytes) -> bytes:
    return data


# Methods whose handlers yield pre-serialized bytes.
_PRE_ENCODED = frozenset({"WatchRuns"})
_SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]


def add_to_server(servicer: object, server: grpc.aio.Server) -> None:
    """Register the RunControl servicer: like the generated
    `add_RunControlServicer_to_server`, but WatchRuns passes its bytes through.

    Built from the service descriptor, so every other method keeps the generated codec.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in _SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        serializer: Callable[[Any], bytes] = (
            _identity if method.name in _PRE_ENCODED else response_type.SerializeToString
        )
        codec: dict[str, Any] = {
            "request_deserializer": request_type.FromString,
            "response_serializer": serializer,
        }
        behaviour = getattr(servicer, method.name)
        if method.client_streaming or not method.server_streaming:
            # RunControl has only unary calls and one server stream.
            if method.client_streaming:
                raise TypeError(f"unsupported client-streaming method {method.name}")
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **codec)
        else:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **codec)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    # Registered methods take grpc's faster lookup path (as the generated code does).
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
