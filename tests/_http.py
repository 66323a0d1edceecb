"""Shared by the HTTP tests (tests/test_http_*.py): a real server with its HTTP listener
on 127.0.0.1, the Connect and gRPC-Web framing written out by hand (as a curl user
or a browser library would send it), and the ErrorInfo of an error body."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from google.rpc import error_details_pb2

from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings

SERVICE = "runcontrol.v1.RunControl"
JSON = {"content-type": "application/json"}
CONNECT_STREAM_JSON = {"content-type": "application/connect+json"}
GRPC_WEB_PROTO = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
# Envelope flags: Connect's end-of-stream message and gRPC-Web's trailers frame.
END_STREAM = 0x02
TRAILERS = 0x80
# Bounds a read of one stream message: a hang fails the test, it measures nothing.
READ_TIMEOUT = 10.0


@dataclasses.dataclass
class Serving:
    server: RunControlServer
    client: httpx.AsyncClient

    @property
    def grpc_address(self) -> str:
        return self.server.address

    def url(self, method: str) -> str:
        return f"/{SERVICE}/{method}"

    async def call(
        self, method: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """A unary Connect call in JSON: what `curl -H 'content-type: application/json'
        -d '{...}' http://HOST:PORT/runcontrol.v1.RunControl/METHOD` sends."""
        return await self.client.post(
            self.url(method), json=body or {}, headers={**JSON, **(headers or {})}
        )


@asynccontextmanager
async def serving(
    settings: Settings | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Serving]:
    """A server with `settings` and its HTTP listener, both on 127.0.0.1:<free port>,
    and an httpx client for the HTTP one (over TLS with `tls`); stopped at once after."""
    settings = dataclasses.replace(
        settings or Settings(), listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    server = RunControlServer(settings)
    await server.start()
    try:
        base = f"{'https' if tls else 'http'}://{server.http_address}"
        async with httpx.AsyncClient(
            base_url=base, timeout=READ_TIMEOUT, verify=tls or True
        ) as client:
            yield Serving(server, client)
    finally:
        await server.stop(grace=0)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    """One message of a Connect stream or a gRPC-Web body: flags, length, payload."""
    return struct.pack(">BI", flags, len(payload)) + payload


class Envelopes:
    """Reads the enveloped messages of a streamed response as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._buffer = b""

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            self._buffer += await anext(self._chunks)

    async def next(self) -> tuple[int, bytes]:
        """(flags, payload) of the next message; StopAsyncIteration at the body's end."""
        async with asyncio.timeout(READ_TIMEOUT):
            await self._fill(5)
            flags, size = struct.unpack(">BI", self._buffer[:5])
            await self._fill(5 + size)
        payload, self._buffer = self._buffer[5 : 5 + size], self._buffer[5 + size :]
        return flags, payload

    async def next_json(self) -> dict[str, Any]:
        """The next stream message (not the end-of-stream one) as JSON."""
        flags, payload = await self.next()
        assert flags == 0, (flags, payload)
        return json.loads(payload)  # type: ignore[no-any-return]

    async def end_json(self) -> dict[str, Any]:
        """Connect's end-of-stream message (`{"error": ...}` when the call failed)."""
        flags, payload = await self.next()
        assert flags == END_STREAM, (flags, payload)
        return json.loads(payload)  # type: ignore[no-any-return]


def error_info(error: dict[str, Any]) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a Connect error (`{"code", "message", "details"}`), decoded from
    its base64 `value` (Connect writes it unpadded)."""
    (detail,) = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo", detail
    value = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    return error_details_pb2.ErrorInfo.FromString(value)
