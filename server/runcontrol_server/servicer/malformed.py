"""Requests whose bytes do not parse: answered INVALID_ARGUMENT / MALFORMED_REQUEST.

Why here and not in a handler: grpc.aio parses a request with the method's
`request_deserializer` before the handler (or any interceptor's wrapper of it) runs,
and when that raises it logs a traceback and answers UNKNOWN "Unexpected <class
DecodeError>", so anyone who reaches the port could fill the log. Instead every method is registered
with a deserializer that never raises (`tolerant`): bytes that do not parse become a
`Malformed` value, and ONE wrapper (`refusing_malformed`) answers it through the
error table before the method's behaviour sees it, with at most one warning line per
`LOG_INTERVAL` seconds. A request that parses pays one `type(...) is` check.

Every service on the server goes through it: RunControl (`wire.add_to_server`) and,
through `TolerantRegistrar`, health and reflection (whose generated `add_*` functions
it is handed instead of the server).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from ..domain.errors import MalformedRequest
from .drain import DrainGate
from .errors import answer_error, to_grpc_status
from .throttled_log import ThrottledLog

log = logging.getLogger(__name__)

# At most one warning line per this many seconds, however many requests do not parse.
LOG_INTERVAL = 10.0
_throttled = ThrottledLog(log, LOG_INTERVAL)

_Context = grpc.aio.ServicerContext[Any, Any]
# Generic only in the type stubs, not at run time.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Malformed:
    """What a request became when its bytes did not parse. Carries no request field
    (interceptors reading one with `getattr(request, name, default)` get the default)."""

    __slots__ = ("message_type", "problem")

    def __init__(self, message_type: str, problem: str) -> None:
        self.message_type = message_type
        self.problem = problem


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserializer` (a message class's `FromString`), returning `Malformed` instead of
    raising when the bytes do not parse."""
    message_type = _message_type(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:  # every parse failure of protobuf (upb and Python)
            return Malformed(message_type, str(error))

    return deserialize


def _message_type(deserializer: Callable[[bytes], Any]) -> str:
    """The full name of the message `deserializer` parses ("" when it is not a
    message class's bound `FromString`)."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", ""))


async def refuse(request: Malformed, context: _Context) -> None:
    """Answer INVALID_ARGUMENT / MALFORMED_REQUEST (raises grpc.aio.AbortError)."""
    _throttled.warning(
        "refused a request from %s that does not parse as %s: %s",
        context.peer(),
        request.message_type or "its message",
        request.problem,
    )
    await context.abort_with_status(to_grpc_status(MalformedRequest(request.message_type)))


def refusing_malformed(handler: _Handler, *, gate: DrainGate | None = None) -> _Handler:
    """`handler` with a `tolerant` deserializer and a behaviour that answers `Malformed`
    requests itself; the kind (unary or stream, coroutine or async generator) is kept,
    as grpc.aio chooses its API by it.

    With a `gate` (RunControl's own methods): a call arriving once the gate is closed
    is answered SHUTTING_DOWN, and every exception of the behaviour is answered through
    the one error table (`errors.answer_error`), so handlers raise and never build a
    status themselves.
    """
    deserializer = handler.request_deserializer
    if deserializer is None:  # raw bytes: there is nothing to parse
        return handler
    codec: dict[str, Any] = {
        "request_deserializer": tolerant(deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        behaviour = _unary(handler.unary_unary, gate)
        return grpc.unary_unary_rpc_method_handler(behaviour, **codec)
    if handler.unary_stream is not None:
        behaviour = _unary(handler.unary_stream, gate)
        return grpc.unary_stream_rpc_method_handler(behaviour, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_streamed(handler.stream_unary), **codec)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(_streamed(handler.stream_stream), **codec)


def _unary(behaviour: Any, gate: DrainGate | None) -> Any:
    """A one-request behaviour that answers a `Malformed` request instead of running
    (and, with a `gate`, calls arriving while it is closed with SHUTTING_DOWN and its
    failures through the error table)."""
    if inspect.isasyncgenfunction(behaviour):

        async def generator(request: Any, context: _Context) -> AsyncIterator[Any]:
            if gate is not None and gate.closed:
                await answer_error(context, await gate.refusal())
            if type(request) is Malformed:
                await refuse(request, context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except Exception as error:
                if gate is None:
                    raise
                await answer_error(context, error)

        return generator
    if not inspect.iscoroutinefunction(behaviour):
        raise TypeError(f"{behaviour!r}: only grpc.aio (async) behaviours can be wrapped")
    if gate is None:

        async def plain(request: Any, context: _Context) -> Any:
            if type(request) is Malformed:
                await refuse(request, context)
            return await behaviour(request, context)

        return plain

    async def answering(request: Any, context: _Context) -> Any:
        if gate.closed:
            await answer_error(context, await gate.refusal())
        if type(request) is Malformed:
            await refuse(request, context)
        try:
            return await behaviour(request, context)
        except Exception as error:  # free until raised (zero-cost try)
            await answer_error(context, error)

    return answering


def _streamed(behaviour: Any) -> Any:
    """A request-stream behaviour whose requests are checked as they are read."""

    async def checked(requests: Any, context: _Context) -> AsyncIterator[Any]:
        async for request in requests:
            if type(request) is Malformed:
                await refuse(request, context)
            yield request

    if inspect.isasyncgenfunction(behaviour):

        async def generator(requests: Any, context: _Context) -> AsyncIterator[Any]:
            async for response in behaviour(checked(requests, context), context):
                yield response

        return generator
    if not inspect.iscoroutinefunction(behaviour):
        raise TypeError(f"{behaviour!r}: only grpc.aio (async) behaviours can be wrapped")

    async def coroutine(requests: Any, context: _Context) -> Any:
        return await behaviour(checked(requests, context), context)

    return coroutine


class _TolerantGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are `refusing_malformed`, each wrapped
    once (by method name)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        # Only methods the inner handler knows: a caller's made-up names are not kept.
        self._wrapped: dict[str, _Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            found = self._inner.service(handler_call_details)
            if found is None:
                return None
            wrapped = self._wrapped[method] = refusing_malformed(found)
        return wrapped


class TolerantRegistrar:
    """Stands in for the server in generated `add_*_to_server` functions (which call
    just these two methods), registering every handler `refusing_malformed`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_TolerantGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, _Handler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: refusing_malformed(h) for name, h in handlers.items()}
        )
