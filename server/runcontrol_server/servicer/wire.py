"""Hand-built wire bytes: each run's `RunRecord` encoded once per revision, and the
responses that carry runs assembled from those bytes.

Why: building a `RunRecord` message field by field (Struct from JSON, two
Timestamps, a dozen setters) costs far more than the rest of a GetRun, and a
ListRuns page did it a hundred times. Here a run is encoded once per revision
(`RecordCache`, keyed by run id and checked against `mod_revision`, so a stale
record is never served) and every response is concatenated from wire bytes,
exactly as protobuf itself would write it: fields in number order, zero values of
plain proto3 fields omitted, `optional` fields written when set. Methods answering
such bytes are registered with a pass-through response serializer (`add_to_server`);
clients see ordinary messages. `tests/test_wire_encoding.py` holds every builder
here byte-equal to protobuf's own serialization.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from runcontrol.v1 import run_control_pb2 as pb

from ..domain.model import Run
from .convert import (
    CANCEL_ACTION_TO_PROTO,
    DISCONNECT_TO_PROTO,
    STATUS_TO_PROTO,
    STRATEGY_TO_PROTO,
)

# Encoded runs kept: one entry per run id (a newer revision replaces the older), the
# oldest entry evicted first; bounded by count and by bytes (payloads can be large).
DEFAULT_RECORD_CACHE_SIZE = 16_384
DEFAULT_RECORD_CACHE_BYTES = 32 << 20
# Serialized Structs kept by their canonical JSON text (runs often share metadata):
# small ones only, so the cache stays within a few megabytes.
STRUCT_CACHE_SIZE = 1024
STRUCT_CACHE_MAX_TEXT = 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MASK64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative values as 64-bit two's complement (int64)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if 0 < value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    # Revisions, Timestamp seconds and nanos: up to 5 bytes, unrolled.
    if 0 < value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if 0 < value < 0x10000000:
        return bytes(
            (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
        )
    if 0 < value < 0x800000000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    if value < 0:
        value &= _MASK64
    out = []
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def tag(field_number: int, wire_type: int) -> bytes:
    return varint(field_number << 3 | wire_type)


def _length(size: int) -> bytes:
    """A length prefix: nearly all are below 128, one table lookup."""
    return _SMALL[size] if size < 0x80 else varint(size)


def _bytes_field(field_tag: bytes, data: bytes) -> bytes:
    """A length-delimited field (string, bytes or sub-message)."""
    return field_tag + _length(len(data)) + data


def _string(field_tag: bytes, value: str) -> bytes:
    return _bytes_field(field_tag, value.encode())


def _timestamp_body(value: datetime) -> bytes:
    """A google.protobuf.Timestamp's bytes, as `Timestamp.FromDatetime` sets it."""
    delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
    seconds = delta.days * 86_400 + delta.seconds
    body = b"\x08" + varint(seconds) if seconds else b""
    if delta.microseconds:
        body += b"\x10" + varint(delta.microseconds * 1000)
    return body


# RunRecord field tags (see protos/runcontrol/v1/run.proto).
_R_RUN_ID = tag(1, 2)
_R_THREAD_ID = tag(2, 2)
_R_ASSISTANT_ID = tag(3, 2)
_R_STATUS = tag(4, 0)
_R_ON_DISCONNECT = tag(5, 0)
_R_STRATEGY = tag(6, 0)
_R_METADATA = tag(7, 2)
_R_KWARGS = tag(8, 2)
_R_CREATED_AT = tag(9, 2)
_R_UPDATED_AT = tag(10, 2)
_R_ERROR = tag(11, 2)
_R_CANCEL_ACTION = tag(12, 0)
_R_CANCEL_REASON = tag(13, 2)
_R_WORKER_ID = tag(14, 2)
_R_DEADLINE = tag(15, 2)
_R_CREATE_REVISION = tag(16, 0)
_R_MOD_REVISION = tag(17, 0)
_R_REQUEST_ID = tag(18, 2)

# Enum fields: the domain value -> the whole field (tag and value), b"" for zero.
_STATUS_FIELD = {k: _R_STATUS + varint(v) if v else b"" for k, v in STATUS_TO_PROTO.items()}
_DISCONNECT_FIELD = {
    k: _R_ON_DISCONNECT + varint(v) if v else b"" for k, v in DISCONNECT_TO_PROTO.items()
}
_STRATEGY_FIELD = {k: _R_STRATEGY + varint(v) if v else b"" for k, v in STRATEGY_TO_PROTO.items()}
_CANCEL_ACTION_FIELD = {
    k: _R_CANCEL_ACTION + varint(v) if v else b"" for k, v in CANCEL_ACTION_TO_PROTO.items()
}

_struct_cache: OrderedDict[str, bytes] = OrderedDict()


def struct_bytes(json_text: str) -> bytes:
    """The serialized `Struct` of a canonical JSON object text (b"" for `{}`)."""
    if json_text == "{}":
        return b""
    data = _struct_cache.get(json_text)
    if data is None:
        struct = Struct()
        struct.update(json.loads(json_text))
        data = struct.SerializeToString()
        if len(json_text) <= STRUCT_CACHE_MAX_TEXT:
            if len(_struct_cache) >= STRUCT_CACHE_SIZE:
                _struct_cache.popitem(last=False)
            _struct_cache[json_text] = data
    return data


def encode_record(run: Run) -> bytes:
    """The serialized `RunRecord` of `run`: byte-equal to
    `convert.run_to_proto(run).SerializeToString()`.

    On the path of every write, so written flat: one tuple joined once, lengths below
    128 (nearly all) from a table instead of a `varint` call.
    """
    metadata = struct_bytes(run.metadata_json)
    kwargs = struct_bytes(run.kwargs_json)
    created = _timestamp_body(run.created_at)
    # A new run's updated_at is its created_at: encode it once.
    updated = created if run.updated_at is run.created_at else _timestamp_body(run.updated_at)
    deadline = run.deadline
    create_revision = run.create_revision
    mod_revision = run.mod_revision
    return b"".join(
        (
            _string(_R_RUN_ID, run.run_id) if run.run_id else b"",
            _string(_R_THREAD_ID, run.thread_id) if run.thread_id else b"",
            b"" if run.assistant_id is None else _string(_R_ASSISTANT_ID, run.assistant_id),
            _STATUS_FIELD[run.status],
            _DISCONNECT_FIELD[run.on_disconnect],
            _STRATEGY_FIELD[run.multitask_strategy],
            _bytes_field(_R_METADATA, metadata) if metadata else b"",
            _bytes_field(_R_KWARGS, kwargs) if kwargs else b"",
            _bytes_field(_R_CREATED_AT, created),
            _bytes_field(_R_UPDATED_AT, updated),
            b"" if run.error is None else _string(_R_ERROR, run.error),
            _CANCEL_ACTION_FIELD[run.cancel_action],
            b"" if run.cancel_reason is None else _string(_R_CANCEL_REASON, run.cancel_reason),
            b"" if run.worker_id is None else _string(_R_WORKER_ID, run.worker_id),
            b"" if deadline is None else _bytes_field(_R_DEADLINE, _timestamp_body(deadline)),
            _R_CREATE_REVISION + varint(create_revision) if create_revision else b"",
            _R_MOD_REVISION + varint(mod_revision) if mod_revision else b"",
            b"" if run.request_id is None else _string(_R_REQUEST_ID, run.request_id),
        )
    )


class RecordCache:
    """Serialized `RunRecord`s, one per run id, each valid for one `mod_revision`.

    A record is a pure function of the run at a revision (records are immutable
    snapshots and revisions only grow), so a hit is exact; a lookup with another
    revision encodes again, and a newer revision replaces the entry. Bounded by count
    and by bytes: past either bound the entry stored longest ago goes (deleted runs
    age out that way).
    """

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_max_entries")

    def __init__(
        self,
        max_entries: int = DEFAULT_RECORD_CACHE_SIZE,
        max_bytes: int = DEFAULT_RECORD_CACHE_BYTES,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        # Insertion-ordered; an OrderedDict pops its oldest entry in O(1) (a dict would
        # scan the holes that earlier pops left at its front).
        self._entries: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes of cached records."""
        return self._bytes

    def encode(self, run: Run) -> bytes:
        entries = self._entries
        entry = entries.get(run.run_id)
        if entry is not None:
            if entry[0] == run.mod_revision:
                return entry[1]
            if entry[0] > run.mod_revision:
                # An older revision (a watcher catching up): answer it, keep the newer.
                return encode_record(run)
            del entries[run.run_id]
            self._bytes -= len(entry[1])
        data = encode_record(run)
        entries[run.run_id] = (run.mod_revision, data)
        self._bytes += len(data)
        while len(entries) > self._max_entries or (self._bytes > self._max_bytes and entries):
            self._bytes -= len(entries.popitem(last=False)[1][1])
        return data


# --- responses ------------------------------------------------------------------------

_F1_LEN = tag(1, 2)
_F2_LEN = tag(2, 2)
_F3_LEN = tag(3, 2)
_F2_VARINT = tag(2, 0)
_F3_VARINT = tag(3, 0)
_F4_TRUE = tag(4, 0) + b"\x01"
_F2_TRUE = _F2_VARINT + b"\x01"


def get_run_response(record: bytes) -> bytes:
    """GetRunResponse{run}; also WaitRunResponse, SetRunStatusResponse and the like
    when the flag after it is false."""
    return _F1_LEN + varint(len(record)) + record


def record_and_flag(record: bytes, flag: bool) -> bytes:
    """A response of `RunRecord run = 1; bool <flag> = 2` (SetRunStatus, CancelRun)."""
    data = _F1_LEN + varint(len(record)) + record
    return data + _F2_TRUE if flag else data


def delete_run_response(record: bytes, revision: int) -> bytes:
    data = _F1_LEN + varint(len(record)) + record
    return data + _F2_VARINT + varint(revision) if revision else data


def list_runs_response(records: Iterable[bytes], next_page_token: str, revision: int) -> bytes:
    parts: list[bytes] = []
    for record in records:
        parts += (_F1_LEN, varint(len(record)), record)
    if next_page_token:
        parts.append(_string(_F2_LEN, next_page_token))
    if revision:
        parts += (_F3_VARINT, varint(revision))
    return b"".join(parts)


def create_run_response(
    record: bytes,
    interrupted: Iterable[bytes],
    queued_behind: Sequence[str],
    replayed: bool,
) -> bytes:
    parts = [_F1_LEN, varint(len(record)), record]
    for other in interrupted:
        parts += (_F2_LEN, varint(len(other)), other)
    for run_id in queued_behind:
        parts.append(_string(_F3_LEN, run_id))
    if replayed:
        parts.append(_F4_TRUE)
    return b"".join(parts)


# --- registration ---------------------------------------------------------------------


# Methods whose handlers return (or yield) pre-serialized response bytes.
PRE_ENCODED = frozenset(
    {"CreateRun", "GetRun", "ListRuns", "SetRunStatus", "CancelRun", "DeleteRun", "WatchRuns"}
)
_SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]


def add_to_server(servicer: object, server: grpc.aio.Server) -> None:
    """Register the RunControl servicer: like the generated
    `add_RunControlServicer_to_server`, but the `PRE_ENCODED` methods pass their
    bytes through.

    Built from the service descriptor, so every other method keeps the generated codec.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in _SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        # None: grpc sends the handler's bytes as they are, without a Python call.
        serializer: Callable[[Any], bytes] | None = (
            None if method.name in PRE_ENCODED else response_type.SerializeToString
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
