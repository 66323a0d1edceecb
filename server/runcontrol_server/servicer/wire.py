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
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.struct_pb2 import Struct

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

from ..domain.model import Run
from .convert import (
    CANCEL_ACTION_TO_PROTO,
    DISCONNECT_TO_PROTO,
    EMPTY_JSON,
    STATUS_TO_PROTO,
    STRATEGY_TO_PROTO,
)
from .drain import DrainGate
from .malformed import refusing_malformed

# Encoded runs kept: one entry per run id (a newer revision replaces the older), the
# oldest entry evicted first; bounded by count and by bytes (payloads can be large).
DEFAULT_RECORD_CACHE_SIZE = 16_384
DEFAULT_RECORD_CACHE_BYTES = 32 << 20
# Serialized Structs kept by their canonical JSON text (runs often share metadata):
# small ones only, so the cache stays within a few megabytes.
STRUCT_CACHE_SIZE = 1024
STRUCT_CACHE_MAX_TEXT = 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
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


# The seconds field of the last timestamp encoded: records written within one second
# share it, so its varint (5 bytes for any date after 1970 + 8 years) is built once.
_last_seconds: tuple[int, bytes] = (0, b"")


def _timestamp_body(value: datetime) -> bytes:
    """A google.protobuf.Timestamp's bytes, as `Timestamp.FromDatetime` sets it."""
    global _last_seconds
    delta = value - _EPOCH  # records hold aware UTC datetimes only
    seconds = delta.days * 86_400 + delta.seconds
    if seconds == _last_seconds[0]:
        body = _last_seconds[1]
    else:
        body = b"\x08" + varint(seconds) if seconds else b""
        _last_seconds = (seconds, body)
    if delta.microseconds:
        body += b"\x10" + varint(delta.microseconds * 1000)
    return body


class FieldTags:
    """Field tags of one message, read from its generated descriptor.

    A renumbered or retyped field changes its tag here, never silently; `check_complete`
    (called at import for every message this module writes) fails when the proto has a
    field the hand-written encoder does not know, so adding a field to the contract
    without teaching the encoder stops the server from starting, not its clients later.
    """

    def __init__(self, message: Descriptor) -> None:
        self._message = message
        self._used: set[str] = set()

    def __call__(self, name: str) -> bytes:
        field = self._message.fields_by_name[name]
        if field.type in _LENGTH_DELIMITED:
            wire_type = 2
        elif field.type in _VARINT_TYPES:
            wire_type = 0
        else:  # pragma: no cover - no such field in the contract
            raise TypeError(f"{self._message.full_name}.{name}: unsupported field type")
        self._used.add(name)
        return tag(field.number, wire_type)

    def check_complete(self) -> None:
        missing = sorted(set(self._message.fields_by_name) - self._used)
        if missing:
            raise RuntimeError(
                f"{self._message.full_name} has fields the wire encoder does not write: "
                f"{', '.join(missing)} (servicer/wire.py)"
            )


_LENGTH_DELIMITED = frozenset(
    {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}
)
_VARINT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_ENUM,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
    }
)

_record_tags = FieldTags(run_pb2.RunRecord.DESCRIPTOR)
_R_RUN_ID = _record_tags("run_id")
_R_THREAD_ID = _record_tags("thread_id")
_R_ASSISTANT_ID = _record_tags("assistant_id")
_R_STATUS = _record_tags("status")
_R_ON_DISCONNECT = _record_tags("on_disconnect")
_R_STRATEGY = _record_tags("multitask_strategy")
_R_METADATA = _record_tags("metadata")
_R_KWARGS = _record_tags("kwargs")
_R_CREATED_AT = _record_tags("created_at")
_R_UPDATED_AT = _record_tags("updated_at")
_R_ERROR = _record_tags("error")
_R_CANCEL_ACTION = _record_tags("cancel_action")
_R_CANCEL_REASON = _record_tags("cancel_reason")
_R_WORKER_ID = _record_tags("worker_id")
_R_DEADLINE = _record_tags("deadline")
_R_CREATE_REVISION = _record_tags("create_revision")
_R_MOD_REVISION = _record_tags("mod_revision")
_R_REQUEST_ID = _record_tags("request_id")
_R_METADATA_JSON = _record_tags("metadata_json")
_R_KWARGS_JSON = _record_tags("kwargs_json")
_R_ATTEMPT = _record_tags("attempt")
_R_MAX_ATTEMPTS = _record_tags("max_attempts")
_R_LEASE_TTL = _record_tags("lease_ttl")
_record_tags.check_complete()

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
    if json_text == EMPTY_JSON:
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
    `run_to_proto(run).SerializeToString()` (the tests' reference encoder).

    On the path of every write, so written flat: one tuple joined once, lengths below
    128 (nearly all) from a table instead of a `varint` call.
    """
    metadata = struct_bytes(run.metadata_json)
    kwargs = struct_bytes(run.kwargs_json)
    structs = (_bytes_field(_R_METADATA, metadata) if metadata else b"") + (
        _bytes_field(_R_KWARGS, kwargs) if kwargs else b""
    )
    return _record(run, structs, b"")


def encode_record_json(run: Run) -> bytes:
    """The `RunRecord` for calls that asked for JSON payloads: byte-equal to
    `run_to_proto(run, payload_json=True).SerializeToString()`."""
    metadata, kwargs = run.metadata_json, run.kwargs_json
    texts = (b"" if metadata == EMPTY_JSON else _string(_R_METADATA_JSON, metadata)) + (
        b"" if kwargs == EMPTY_JSON else _string(_R_KWARGS_JSON, kwargs)
    )
    return _record(run, b"", texts)


def _duration_body(value: timedelta) -> bytes:
    """A google.protobuf.Duration's bytes, as `Duration.FromTimedelta` sets it."""
    seconds, micros = divmod(value // _MICROSECOND, 1_000_000)
    if seconds < 0 and micros:  # seconds and nanos share the sign (toward zero)
        seconds, micros = seconds + 1, micros - 1_000_000
    body = b"\x08" + varint(seconds) if seconds else b""
    if micros:
        body += b"\x10" + varint(micros * 1000)
    return body


def _record(run: Run, structs: bytes, texts: bytes) -> bytes:
    """A `RunRecord` with its payloads already encoded: `structs` as fields 7-8 or
    `texts` as fields 19-20 (the other one empty)."""
    created = _timestamp_body(run.created_at)
    # A new run's updated_at is its created_at: encode it once.
    updated = created if run.updated_at is run.created_at else _timestamp_body(run.updated_at)
    deadline = run.deadline
    create_revision = run.create_revision
    mod_revision = run.mod_revision
    attempt = run.attempt
    max_attempts = run.max_attempts
    lease_ttl = run.lease_ttl
    return b"".join(
        (
            _string(_R_RUN_ID, run.run_id) if run.run_id else b"",
            _string(_R_THREAD_ID, run.thread_id) if run.thread_id else b"",
            b"" if run.assistant_id is None else _string(_R_ASSISTANT_ID, run.assistant_id),
            _STATUS_FIELD[run.status],
            _DISCONNECT_FIELD[run.on_disconnect],
            _STRATEGY_FIELD[run.multitask_strategy],
            structs,
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
            texts,
            _R_ATTEMPT + varint(attempt) if attempt else b"",
            # Never 0 in a stored run (at least 1); the check keeps protobuf's rule.
            _R_MAX_ATTEMPTS + varint(max_attempts) if max_attempts else b"",
            b"" if lease_ttl is None else _bytes_field(_R_LEASE_TTL, _duration_body(lease_ttl)),
        )
    )


class RecordCache:
    """Serialized `RunRecord`s, one per run id, each valid for one `mod_revision`.

    A record is a pure function of the run at a revision (records are immutable
    snapshots and revisions only grow), so a hit is exact; a lookup with another
    revision encodes again, and a newer revision replaces the entry. Bounded by count
    and by bytes: past either bound the entry stored longest ago goes (deleted runs
    age out that way).

    One cache holds one payload format (`payload_json`: `encode_record_json`, else
    `encode_record`): a servicer keeps one cache per format, so the bytes of one format
    can never answer a call that asked for the other.
    """

    __slots__ = ("_bytes", "_encode", "_entries", "_max_bytes", "_max_entries", "payload_json")

    def __init__(
        self,
        max_entries: int = DEFAULT_RECORD_CACHE_SIZE,
        max_bytes: int = DEFAULT_RECORD_CACHE_BYTES,
        *,
        payload_json: bool = False,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self.payload_json = payload_json
        self._encode = encode_record_json if payload_json else encode_record
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
                return self._encode(run)
            del entries[run.run_id]
            self._bytes -= len(entry[1])
        data = self._encode(run)
        entries[run.run_id] = (run.mod_revision, data)
        self._bytes += len(data)
        while len(entries) > self._max_entries or (self._bytes > self._max_bytes and entries):
            self._bytes -= len(entries.popitem(last=False)[1][1])
        return data


# --- responses ------------------------------------------------------------------------

_get_tags = FieldTags(pb.GetRunResponse.DESCRIPTOR)
_RUN = _get_tags("run")
_get_tags.check_complete()
# SetRunStatus, CancelRun and WaitRun answer `RunRecord run = 1; bool <flag> = 2`.
_FLAG_RESPONSES = (
    (pb.SetRunStatusResponse.DESCRIPTOR, "changed"),
    (pb.CancelRunResponse.DESCRIPTOR, "cancelled"),
    (pb.WaitRunResponse.DESCRIPTOR, "done"),
)
for _descriptor, _flag in _FLAG_RESPONSES:
    _flag_tags = FieldTags(_descriptor)
    if (_flag_tags("run"), _flag_tags(_flag)) != (_RUN, tag(2, 0)):
        raise RuntimeError(f"{_descriptor.full_name} no longer matches record_and_flag")
    _flag_tags.check_complete()
_FLAG_TRUE = tag(2, 0) + b"\x01"
_delete_tags = FieldTags(pb.DeleteRunResponse.DESCRIPTOR)
_D_RUN = _delete_tags("run")
_D_REVISION = _delete_tags("revision")
_delete_tags.check_complete()
_list_tags = FieldTags(pb.ListRunsResponse.DESCRIPTOR)
_L_RUNS = _list_tags("runs")
_L_NEXT_PAGE_TOKEN = _list_tags("next_page_token")
_L_REVISION = _list_tags("revision")
_list_tags.check_complete()
_create_tags = FieldTags(pb.CreateRunResponse.DESCRIPTOR)
_C_RUN = _create_tags("run")
_C_INTERRUPTED = _create_tags("interrupted_runs")
_C_QUEUED_BEHIND = _create_tags("queued_behind_run_ids")
_C_REPLAYED_TRUE = _create_tags("replayed") + b"\x01"
_create_tags.check_complete()
_renew_tags = FieldTags(pb.RenewRunLeaseResponse.DESCRIPTOR)
_RL_LEASE_EXPIRES_AT = _renew_tags("lease_expires_at")
_RL_RUN = _renew_tags("run")
_renew_tags.check_complete()


def get_run_response(record: bytes) -> bytes:
    """GetRunResponse{run}."""
    return _RUN + varint(len(record)) + record


def record_and_flag(record: bytes, flag: bool) -> bytes:
    """A response of `RunRecord run = 1; bool <flag> = 2` (SetRunStatus, CancelRun,
    WaitRun; checked against their descriptors at import)."""
    data = _RUN + varint(len(record)) + record
    return data + _FLAG_TRUE if flag else data


def delete_run_response(record: bytes, revision: int) -> bytes:
    data = _D_RUN + varint(len(record)) + record
    return data + _D_REVISION + varint(revision) if revision else data


def list_runs_response(records: Iterable[bytes], next_page_token: str, revision: int) -> bytes:
    parts: list[bytes] = []
    for record in records:
        parts += (_L_RUNS, varint(len(record)), record)
    if next_page_token:
        parts.append(_string(_L_NEXT_PAGE_TOKEN, next_page_token))
    if revision:
        parts += (_L_REVISION, varint(revision))
    return b"".join(parts)


def create_run_response(
    record: bytes,
    interrupted: Iterable[bytes],
    queued_behind: Sequence[str],
    replayed: bool,
) -> bytes:
    parts = [_C_RUN, varint(len(record)), record]
    for other in interrupted:
        parts += (_C_INTERRUPTED, varint(len(other)), other)
    for run_id in queued_behind:
        parts.append(_string(_C_QUEUED_BEHIND, run_id))
    if replayed:
        parts.append(_C_REPLAYED_TRUE)
    return b"".join(parts)


def renew_run_lease_response(lease_expires_at: datetime, record: bytes) -> bytes:
    """RenewRunLeaseResponse{lease_expires_at = 1, run = 2}."""
    return _bytes_field(_RL_LEASE_EXPIRES_AT, _timestamp_body(lease_expires_at)) + _bytes_field(
        _RL_RUN, record
    )


# --- registration ---------------------------------------------------------------------


# Methods whose handlers return (or yield) pre-serialized response bytes.
PRE_ENCODED = frozenset(
    {
        "CreateRun",
        "GetRun",
        "ListRuns",
        "SetRunStatus",
        "CancelRun",
        "DeleteRun",
        "WatchRuns",
        "RenewRunLease",
        "WaitRun",
    }
)
_SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]


def add_to_server(servicer: object, server: grpc.aio.Server, *, gate: DrainGate) -> None:
    """Register the RunControl servicer: like the generated
    `add_RunControlServicer_to_server`, but the `PRE_ENCODED` methods pass their
    bytes through, bytes that do not parse as the request are answered
    MALFORMED_REQUEST, calls arriving once `gate` is closed SHUTTING_DOWN, and every
    failure of a handler is answered from the one error table
    (`malformed.refusing_malformed`).

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
            handler = grpc.unary_unary_rpc_method_handler(behaviour, **codec)
        else:
            handler = grpc.unary_stream_rpc_method_handler(behaviour, **codec)
        handlers[method.name] = refusing_malformed(handler, gate=gate)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    # Registered methods take grpc's faster lookup path (as the generated code does).
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
