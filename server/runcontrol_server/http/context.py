"""What the RunControl handlers and the interceptors use of a grpc.aio servicer
context, for a call that came over HTTP.

The subset, and why each is there: `invocation_metadata` (the bearer token, the
payload format), `peer` (per-peer limits and the access log, in gRPC's
"ipv4:HOST:PORT" form so one client host counts as one over both protocols),
`abort_with_status` / `abort` / `code` / `details` (how every failure leaves a
handler, and what observability reads of it), `time_remaining` (a deadline the
client sent), `send_initial_metadata` / `set_trailing_metadata` (response headers and
trailers), `auth_context` (no client certificate over HTTP: tokens only) and `write`
(WatchRuns writes its messages; `Writes` hands them to the response stream).

As in grpc.aio, an abort raises `grpc.aio.AbortError`: the wrappers that answer
failures through the error table let that one pass, and the endpoint turns the
recorded status into the Connect error (`status.connect_error`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from .handlers import Metadata
from .status import connect_error


def grpc_peer(address: str | None) -> str:
    """An ASGI client address ("HOST:PORT", an IPv6 host unbracketed) as gRPC writes
    a peer: "ipv4:10.0.0.5:41234", "ipv6:[::1]:5000"."""
    if not address:
        return "unknown"
    host, _, port = address.rpartition(":")
    if ":" in host:
        return f"ipv6:[{host}]:{port}"
    return f"ipv4:{host}:{port}"


class Writes:
    """Messages a stream handler writes, handed one at a time to the response.

    `write` returns once the response has taken the message, so a slow client slows
    the handler as gRPC's flow control does, and nothing queues up without bound.
    """

    _END = object()

    def __init__(self) -> None:
        self._items: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, message: Any) -> None:
        self._items.put_nowait(message)
        await self._items.join()

    def close(self) -> None:
        """No more writes (the handler ended): the response's iteration stops."""
        self._items.put_nowait(self._END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self._items.get()) is not self._END:
            yield message
            self._items.task_done()  # the response sent it: the writer goes on


def http_protocol(metadata: Metadata) -> str:
    """Which protocol the call's content type speaks: "grpc-web" or "connect"."""
    for key, value in metadata:
        if key == "content-type":
            return "grpc-web" if value.startswith("application/grpc-web") else "connect"
    return "connect"  # a Connect GET carries no content type


class HttpServicerContext:
    """A grpc.aio servicer context over one connectrpc call (`request`).

    `protocol` ("connect" or "grpc-web") labels the call's metrics; a grpc.aio context
    has no such attribute, and observers read its absence as "grpc".
    """

    def __init__(
        self, request: RequestContext[Any, Any], metadata: Metadata, writes: Writes | None = None
    ) -> None:
        self._request = request
        self._metadata = metadata
        self.protocol = http_protocol(metadata)
        self._peer = grpc_peer(request.client_address)
        self._writes = writes
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Sequence[tuple[str, Any]] = ()

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        remaining = self._request.timeout_ms
        return None if remaining is None else max(0.0, remaining / 1000)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            self._request.response_headers.add(key, value)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = metadata

    async def write(self, message: Any) -> None:
        if self._writes is None:
            raise RuntimeError("write on a unary call")
        await self._writes.write(message)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._code, self._details, self._trailing = code, details, tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def error(self) -> ConnectError:
        """The Connect error of the status the call was aborted with."""
        code = self._code if self._code is not None else grpc.StatusCode.UNKNOWN
        return connect_error(code, self._details, self._trailing)
