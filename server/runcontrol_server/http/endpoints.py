"""The connectrpc ASGI application of RunControl: one endpoint per method of the
service descriptor, each running the handler the gRPC server would run.

No code generation: connectrpc's generated module would only restate the descriptor
(paths, message types, stream kinds), which the compiled `run_control_pb2` already
holds, so the endpoints are read from it, as `wire.add_to_server` reads the gRPC
handlers. A method added to the proto is served over HTTP with nothing to write.

An endpoint runs a call as grpc.aio would: the handler picked through the server's
interceptors (`handlers.InterceptedMethods`), called with an `HttpServicerContext`;
an abort becomes the Connect error of its status. A server stream's handler runs as
a task writing into `Writes`, which the response iterates.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from runcontrol.v1 import run_control_pb2 as pb

from ..servicer.errors import INTERNAL_MESSAGE
from .codecs import BinaryCodec, Encoded, JsonCodec
from .context import HttpServicerContext, Writes
from .handlers import Handler, InterceptedMethods, Metadata, Metadatum

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]
# grpc's own words when `maximum_concurrent_rpcs` refuses a call.
CONCURRENCY_MESSAGE = "Concurrent RPC limit exceeded!"

_Unary = Callable[[Any, RequestContext[Any, Any]], Awaitable[Encoded]]
_Stream = Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Encoded]]


def _metadata(request: RequestContext[Any, Any]) -> Metadata:
    """The request headers as gRPC metadata (ASGI names are lowercase already)."""
    return tuple(Metadatum(key, value) for key, value in request.request_headers.allitems())


def _serialized(handler: Handler, response: Any) -> bytes:
    """The handler's answer as bytes: pre-encoded ones pass (no serializer), others
    go through the method's own serializer, as grpc would send them."""
    serialize = handler.response_serializer
    return response if serialize is None else serialize(response)


def _unexpected(method: str) -> ConnectError:
    # The error table's answer to anything unmapped: INTERNAL, no internals sent.
    log.exception("unexpected error in HTTP call of %s", method)
    return ConnectError(Code.INTERNAL, INTERNAL_MESSAGE)


class RunControlEndpoints:
    """The endpoints of every RunControl method over `methods`; at most
    `max_concurrent_calls` at once (None: unlimited), as `--max-concurrent-rpcs`
    bounds the gRPC port."""

    def __init__(
        self, methods: InterceptedMethods, *, max_concurrent_calls: int | None = None
    ) -> None:
        self._methods = methods
        self._max_calls = max_concurrent_calls
        self._calls = 0

    def table(self) -> dict[str, Any]:
        """URL path -> endpoint (unary or server stream), from the service descriptor."""
        table: dict[str, Any] = {}
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            info = _method_info(method)
            if method.server_streaming:
                table[path] = Endpoint.server_stream(info, self._stream(path, info.output))
            else:
                table[path] = Endpoint.unary(info, self._unary(path, info.output))
        return table

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self._max_calls is not None and self._calls >= self._max_calls:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, CONCURRENCY_MESSAGE)
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1

    def _unary(self, path: str, output: type[Message]) -> _Unary:
        methods = self._methods

        async def call(request: Any, http: RequestContext[Any, Any]) -> Encoded:
            metadata = _metadata(http)
            context = HttpServicerContext(http, metadata)
            with self._slot():
                handler = await methods.handler(path, metadata)
                behaviour: Any = handler.unary_unary
                try:
                    response = await behaviour(request, context)
                except grpc.aio.AbortError:
                    raise context.error() from None
                except Exception:
                    raise _unexpected(path) from None
            return Encoded(_serialized(handler, response), output)

        return call

    def _stream(self, path: str, output: type[Message]) -> _Stream:
        methods = self._methods

        async def call(request: Any, http: RequestContext[Any, Any]) -> AsyncIterator[Encoded]:
            metadata = _metadata(http)
            writes = Writes()
            context = HttpServicerContext(http, metadata, writes)
            with self._slot():
                handler = await methods.handler(path, metadata)
                task = asyncio.ensure_future(_run_stream(handler, request, context, writes))
                try:
                    async for message in writes:
                        yield Encoded(_serialized(handler, message), output)
                    await task
                except grpc.aio.AbortError:
                    raise context.error() from None
                except Exception:
                    raise _unexpected(path) from None
                finally:
                    # The client went away or the response failed: the handler stops
                    # as a cancelled gRPC stream does (its watcher and slot released).
                    if not task.done():
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)

        return call


async def _run_stream(
    handler: Handler, request: Any, context: HttpServicerContext, writes: Writes
) -> None:
    """Run a server-stream behaviour of either kind grpc.aio serves (a coroutine
    writing with `context.write`, or an async generator) into `writes`."""
    behaviour: Any = handler.unary_stream
    try:
        if inspect.isasyncgenfunction(behaviour):
            async for message in behaviour(request, context):
                await writes.write(message)
        else:
            await behaviour(request, context)
    finally:
        writes.close()


def _method_info(method: MethodDescriptor) -> MethodInfo[Any, Any]:
    if method.client_streaming:  # as `wire.add_to_server`: RunControl has none
        raise TypeError(f"unsupported client-streaming method {method.name}")
    return MethodInfo(
        name=method.name,
        service_name=SERVICE.full_name,
        input=getattr(pb, method.input_type.name),
        output=getattr(pb, method.output_type.name),
        # No method declares an idempotency level: every call is a POST.
        idempotency_level=IdempotencyLevel.UNKNOWN,
        stream_type=StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY,
    )


class RunControlApplication(ConnectASGIApplication[RunControlEndpoints]):
    """The ASGI application: Connect (binary and JSON, unary and server streaming) and
    gRPC-Web, at "/runcontrol.v1.RunControl/<Method>"."""

    def __init__(self, endpoints: RunControlEndpoints, *, read_max_bytes: int) -> None:
        super().__init__(
            service=endpoints,
            endpoints=RunControlEndpoints.table,
            read_max_bytes=read_max_bytes,
            codecs=(BinaryCodec(), JsonCodec()),
        )

    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}"
