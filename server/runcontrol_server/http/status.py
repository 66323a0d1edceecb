"""A gRPC status, as the servicer answers it, turned into the same Connect error.

The servicer never builds a status for HTTP: its one error table
(`servicer.errors`) answers `abort_with_status` with a `grpc.Status` whose
`grpc-status-details-bin` trailer holds a `google.rpc.Status` with the ErrorInfo.
Here that status becomes a `ConnectError` with the same code (Connect's lowercase
name), the same message and the same details, so a Connect error body carries
`{"type": "google.rpc.ErrorInfo", "value": <base64>, "debug": {...}}` and a gRPC-Web
answer the same `google.rpc.Status` in `grpc-status-details-bin` as a gRPC client reads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2
from protobuf import Registry
from protobuf.wkt import Any as AnyDetail
from protobuf.wkt import FileDescriptorProto, FileDescriptorSet

DETAILS_KEY = "grpc-status-details-bin"

# gRPC and Connect name the same seventeen codes; only CANCELLED is spelled otherwise.
_CODES: dict[grpc.StatusCode, Code] = {
    code: Code.CANCELED if code is grpc.StatusCode.CANCELLED else Code[code.name]
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
}


def connect_code(code: grpc.StatusCode) -> Code:
    """The Connect code of a gRPC code (OK has none: UNKNOWN, never expected here)."""
    return _CODES.get(code, Code.UNKNOWN)


def connect_error(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, Any]] = ()
) -> ConnectError:
    """The Connect error of a gRPC status: its details from `grpc-status-details-bin`."""
    details: list[ErrorDetail] = []
    for key, value in trailing_metadata:
        if key == DETAILS_KEY and isinstance(value, bytes):
            details += (_detail(any_) for any_ in status_pb2.Status.FromString(value).details)
    return ConnectError(connect_code(code), message, details)


def _detail(detail: Any) -> ErrorDetail:
    """One `google.protobuf.Any` detail, decoded when its type is known, so the Connect
    error body also shows it as JSON (`debug`); the message is the same either way."""
    packed = AnyDetail(type_url=detail.type_url, value=detail.value)
    message = ErrorDetail(packed).value(_detail_types())
    return ErrorDetail(message if message is not None else packed)


@functools.cache
def _detail_types() -> Registry:
    """The detail messages the server sends (google.rpc's), for connectrpc's protobuf
    runtime, built once from the descriptors the google.protobuf runtime already has."""
    return FileDescriptorSet(file=_with_json_names(error_details_pb2.DESCRIPTOR)).to_registry()


def _with_json_names(file: FileDescriptor) -> list[FileDescriptorProto]:
    """`file` and its imports, dependencies first, each field given its JSON name.

    The descriptors compiled into google.protobuf modules may lack `json_name` (protoc
    fills it in only for plugins), and without it every field would print as "".
    """
    ordered: dict[str, FileDescriptorProto] = {}

    def add(current: FileDescriptor) -> None:
        if current.name in ordered:
            return
        for dependency in current.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        current.CopyToProto(proto)
        _name_fields(proto.message_type)
        ordered[current.name] = FileDescriptorProto.from_binary(proto.SerializeToString())

    add(file)
    return list(ordered.values())


def _name_fields(messages: Sequence[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if not field.json_name:
                field.json_name = _json_name(field.name)
        _name_fields(message.nested_type)


def _json_name(name: str) -> str:
    """protoc's JSON name (`ToJsonName`): each underscore dropped, the next letter upper."""
    out: list[str] = []
    upper = False
    for char in name:
        if char == "_":
            upper = True
        else:
            out.append(char.upper() if upper else char)
            upper = False
    return "".join(out)
