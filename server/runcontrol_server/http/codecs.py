"""Request and response messages in Protobuf binary or JSON, for connectrpc.

Requests are decoded as the gRPC port decodes them: bytes (or JSON) that do not parse
become a `malformed.Malformed` value instead of an exception, so the handler's own
wrapper answers INVALID_ARGUMENT / MALFORMED_REQUEST with its ErrorInfo, as over gRPC.

Answers are what the gRPC handlers produce: mostly pre-encoded bytes (`servicer.wire`).
An endpoint returns them as `Encoded` (the bytes and their message type): the binary
codec sends the bytes as they are, the JSON codec parses them once and prints the
message in the proto3 JSON mapping (lowerCamelCase names, 64-bit integers as strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ..servicer.malformed import Malformed, tolerant


@dataclass(frozen=True, slots=True)
class Encoded:
    """A serialized response message of type `message_type`."""

    data: bytes
    message_type: type[Message]

    def message(self) -> Message:
        return self.message_type.FromString(self.data)


_parsers: dict[type[Message], Callable[[bytes], Any]] = {}


def _tolerant_parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    """`tolerant(message_type.FromString)`, made once per request type."""
    parser = _parsers.get(message_type)
    if parser is None:
        parser = _parsers[message_type] = tolerant(message_type.FromString)
    return parser


class BinaryCodec:
    """`application/proto` (Connect) and `application/grpc-web+proto`."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Encoded | Message) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Any:
        return _tolerant_parser(message_class)(bytes(data))


class JsonCodec:
    """`application/json` (Connect) and `application/grpc-web+json`.

    Unknown fields are ignored, as the binary format ignores unknown field numbers
    (Connect's default too). An empty body is the empty message, so `curl -d ''` works.
    """

    def name(self) -> str:
        return "json"

    def encode(self, message: Encoded | Message) -> bytes:
        if isinstance(message, Encoded):
            message = message.message()
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Any:
        message = message_class()
        if not bytes(data).strip():
            return message
        try:
            json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, RecursionError) as error:
            return Malformed(message_class.DESCRIPTOR.full_name, str(error))
        return message
