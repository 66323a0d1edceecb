"""Hostile request bytes for any protobuf request type, from a seeded `random.Random`.

Built on the wire format itself (tags, varints, length prefixes) from the message
descriptors, so every RPC gets the same kinds of abuse without a hand-written case per
field, and values the Python API would refuse to set (an int32 of 2^40, a negative
page size in a uint) still reach the server. Each generator names its kind, so a test
can count answers per kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor

Generator = Callable[[random.Random, Descriptor], bytes]

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1
HOSTILE_INTS = (
    0,
    1,
    -1,
    -(1 << 31),
    (1 << 31) - 1,
    1 << 31,
    -(1 << 63),
    (1 << 63) - 1,
    1 << 40,
    10**6,
    99,
)
INVALID_UTF8 = (
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"a\xfe\xfeb",
    b"\xc0\xaf",
)
HOSTILE_TEXT = ("", "a\nb", "\x00", "a\u200bb", "\U0001f600" * 3, "é" * 100, "x" * 129)
# The proto message-nesting limit is 100: nest some Structs past it and some below.
MAX_STRUCT_NESTING = 60
# A field number no request type uses.
UNKNOWN_FIELD = 1000
_VARINT_KINDS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}
_FIXED32_KINDS = {
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_FLOAT,
}
_FIXED64_KINDS = {
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_DOUBLE,
}


def varint(value: int) -> bytes:
    value &= _MASK64  # negative numbers as 64-bit two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, _LENGTH) + varint(len(payload)) + payload


def _wire_type(field: FieldDescriptor) -> int:
    if field.type in _VARINT_KINDS:
        return _VARINT
    if field.type in _FIXED32_KINDS:
        return _FIXED32
    if field.type in _FIXED64_KINDS:
        return _FIXED64
    return _LENGTH


def _text(rng: random.Random, giant: bool = True) -> bytes:
    roll = rng.random()
    if giant and roll < 0.05:  # past every text and id limit
        return b"g" * rng.choice((4097, 70_000, 300_000))
    if roll < 0.5:
        return rng.choice(HOSTILE_TEXT).encode()
    return "".join(rng.choice("abcdef-_.:/ ") for _ in range(rng.randint(1, 24))).encode()


def _value(rng: random.Random, field: FieldDescriptor, depth: int, giant: bool = True) -> bytes:
    """One value of `field`, tag included: well-formed bytes with hostile content."""
    wire_type = _wire_type(field)
    if wire_type == _VARINT:
        number = rng.choice(HOSTILE_INTS) if rng.random() < 0.7 else rng.getrandbits(64)
        return tag(field.number, _VARINT) + varint(number)
    if wire_type == _FIXED32:
        return tag(field.number, _FIXED32) + rng.randbytes(4)
    if wire_type == _FIXED64:
        return tag(field.number, _FIXED64) + rng.randbytes(8)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return length_delimited(field.number, message(rng, field.message_type, depth + 1))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return length_delimited(field.number, rng.randbytes(rng.randint(0, 64)))
    return length_delimited(field.number, _text(rng, giant))


def message(rng: random.Random, descriptor: Descriptor, depth: int = 0) -> bytes:
    """A message of `descriptor` that parses, every field hostile or absent."""
    if depth > 6:
        return b""
    parts: list[bytes] = []
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        repeats = 1
        if field.is_repeated:
            repeats = rng.choice((0, 1, 3, 1001)) if depth == 0 else rng.choice((0, 1, 2))
        # A thousand entries of short values: enough to pass every count limit.
        giant = repeats == 1
        parts.extend(_value(rng, field, depth, giant) for _ in range(repeats))
    rng.shuffle(parts)  # fields out of number order are legal
    return b"".join(parts)


def _string_fields(descriptor: Descriptor) -> list[FieldDescriptor]:
    return [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]


# --- the kinds of hostile bytes -------------------------------------------------------


def random_bytes(rng: random.Random, descriptor: Descriptor) -> bytes:
    return rng.randbytes(rng.choice((1, 2, 5, 17, 64, 300)))


def truncated(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A message cut short, mostly inside a field (some cuts fall on a boundary and
    leave a valid prefix)."""
    data = message(rng, descriptor) or length_delimited(1, b"abcdef")
    return data[: rng.randrange(len(data))] if len(data) > 1 else b"\x0a"


def wrong_wire_type(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A known field sent with another wire type than its declared one (a message
    without fields gets an end-group tag with no group open)."""
    if not descriptor.fields:
        return tag(1, _END_GROUP)
    field = rng.choice(descriptor.fields)
    wrong = rng.choice(
        [w for w in (_VARINT, _FIXED64, _LENGTH, _FIXED32) if w != _wire_type(field)]
    )
    payload = {
        _VARINT: varint(rng.choice(HOSTILE_INTS)),
        _FIXED64: rng.randbytes(8),
        _LENGTH: varint(3) + b"abc",
        _FIXED32: rng.randbytes(4),
    }[wrong]
    return message(rng, descriptor) + tag(field.number, wrong) + payload


def invalid_utf8(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A string field holding bytes that are not UTF-8 (else a nested message)."""
    fields = _string_fields(descriptor)
    bad = b"ok" + rng.choice(INVALID_UTF8)
    if fields:
        return message(rng, descriptor) + length_delimited(rng.choice(fields).number, bad)
    nested = [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE]
    if nested:  # e.g. a Duration has no strings: fall back to the parent's other fields
        return length_delimited(rng.choice(nested).number, length_delimited(1, bad))
    return length_delimited(1, bad)


def huge_length(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A length prefix far beyond the bytes that follow (up to 2^63)."""
    number = rng.choice(descriptor.fields).number if descriptor.fields else 1
    prefix = rng.choice((1 << 31, (1 << 32) + 5, (1 << 63) - 1, 1 << 20, 10_000))
    return tag(number, _LENGTH) + varint(prefix) + rng.randbytes(rng.randint(0, 16))


def nested_struct(depth: int, *, lists: bool = False) -> bytes:
    """A google.protobuf.Struct nested `depth` times (as struct or list values)."""
    body = b""
    for _ in range(depth):
        if lists:  # Value.list_value = 6 -> ListValue.values = 1 -> Value
            value = length_delimited(6, length_delimited(1, length_delimited(5, body)))
        else:  # Value.struct_value = 5
            value = length_delimited(5, body)
        body = length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
    return body


def deep_struct(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A deeply nested Struct in a Struct field (metadata, kwargs), else as an unknown
    field, which a parser skips without looking inside."""
    structs = [
        f
        for f in descriptor.fields
        if f.type == FieldDescriptor.TYPE_MESSAGE
        and f.message_type.full_name == "google.protobuf.Struct"
    ]
    nested = nested_struct(rng.randint(10, MAX_STRUCT_NESTING), lists=rng.random() < 0.3)
    if not structs:
        return length_delimited(UNKNOWN_FIELD, nested)
    # A valid thread_id (CreateRunRequest field 1), so the payload is what is judged.
    thread_id = length_delimited(1, b"deep-" + rng.randbytes(4).hex().encode())
    return thread_id + length_delimited(rng.choice(structs).number, nested)


def hostile_values(rng: random.Random, descriptor: Descriptor) -> bytes:
    """A message that parses, with hostile values: negative and enormous numbers,
    unknown enum numbers, giant strings, a thousand repeated entries."""
    return message(rng, descriptor)


KINDS: dict[str, Generator] = {
    "random_bytes": random_bytes,
    "truncated": truncated,
    "wrong_wire_type": wrong_wire_type,
    "invalid_utf8": invalid_utf8,
    "huge_length": huge_length,
    "deep_struct": deep_struct,
    "hostile_values": hostile_values,
}
