"""Keyset page tokens for ListRuns.

A token is opaque to clients: urlsafe base64 (no padding) of

    version (1 byte) | created_at (int64 µs since epoch) | create_revision (int64)
    | filter digest (16 bytes) | HMAC-SHA256 of everything before it (32 bytes)

The cursor is the position after the last run of the page, so the next page
starts strictly after it whatever was created or deleted meanwhile (no run twice,
none skipped). The filter digest binds the token to the request's thread_id and
statuses; the MAC makes tampering detectable, so a token can never point a reader
at a position it was not given.

Replicas behind one load balancer must share the key (`page_token_key`): with the
default random per-process key a token is only valid on the process that issued it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from ..domain.errors import InvalidArgument
from ..domain.model import ListCursor, RunStatus

_VERSION = 1
_BODY = struct.Struct(">Bqq16s")
_MAC_SIZE = hashlib.sha256().digest_size
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIELD = "page_token"


def filter_digest(thread_id: str | None, statuses: Iterable[RunStatus]) -> bytes:
    """Identity of a list filter; status order and repeats do not matter."""
    canonical = "\x00".join([thread_id or "", *sorted({s.value for s in statuses})])
    return hashlib.sha256(canonical.encode()).digest()[:16]


class PageTokenCodec:
    def __init__(self, key: bytes | None = None) -> None:
        # A random key is fine for one process; see the module docstring for replicas.
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def encode(self, cursor: ListCursor, digest: bytes) -> str:
        micros = (cursor.created_at - _EPOCH) // _MICROSECOND
        body = _BODY.pack(_VERSION, micros, cursor.create_revision, digest)
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    def decode(self, token: str, digest: bytes) -> ListCursor:
        """The cursor in `token`; raises InvalidArgument("page_token") if it is not ours."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument(_FIELD, "is not a valid page token") from None
        if len(raw) != _BODY.size + _MAC_SIZE:
            raise InvalidArgument(_FIELD, "is not a valid page token")
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidArgument(_FIELD, "is not a valid page token (altered or foreign)")
        version, micros, create_revision, token_digest = _BODY.unpack(body)
        if version != _VERSION:
            raise InvalidArgument(_FIELD, f"has unsupported version {version}")
        if not hmac.compare_digest(token_digest, digest):
            raise InvalidArgument(_FIELD, "was issued for a different filter")
        try:
            created_at = _EPOCH + micros * _MICROSECOND
        except OverflowError:
            raise InvalidArgument(_FIELD, "is not a valid page token") from None
        return ListCursor(created_at, create_revision)
