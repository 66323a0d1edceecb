"""One server interceptor that times every call and learns how it ended, for the RPC
metrics and the access log.

Why one interceptor for both: every interceptor costs each call an extra step in
grpc.aio's chain, and both consumers need the same two facts (duration, final code).
The app adds it only when one of them is on, so with both off a call pays nothing.

Each method's behaviour is wrapped once and the wrapped handler reused for every later
call of that method (the cache is checked by identity, so a handler the drain
interceptor made for one call is wrapped afresh). A call's duration is from the
handler's start to its end: for WatchRuns and other server streams it is the
stream's whole life (see `Method.streaming`). A call of an unknown method never
reaches a handler (grpc answers UNIMPLEMENTED itself) and is not seen here.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from .codes import raised_code, returned_code

log = logging.getLogger(__name__)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Method:
    """A gRPC method as observers label it."""

    service: str  # "runcontrol.v1.RunControl"
    name: str  # "CreateRun"
    streaming: bool  # the server streams: the duration is the stream's lifetime

    @classmethod
    def parse(cls, full_name: str, streaming: bool) -> Method:
        service, _, name = full_name.lstrip("/").rpartition("/")
        return cls(service, name, streaming)


class CallSink(Protocol):
    """Told about every finished call. Runs on the call's path: must be quick.

    `response` is what the handler returned (None for streams and failures); the
    RunControl handlers return pre-encoded bytes (see `servicer.wire`).
    """

    def __call__(
        self,
        method: Method,
        code: grpc.StatusCode,
        seconds: float,
        request: Any,
        context: _Context,
        response: Any,
    ) -> None: ...


class CallObserver(grpc.aio.ServerInterceptor):
    """Times each call and hands (method, code, duration, request) to the sinks."""

    def __init__(self, sinks: tuple[CallSink, ...]) -> None:
        self._sinks = sinks
        # method -> (the handler as continuation gave it, the wrapped handler)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # type: ignore[no-any-return]
        wrapped = self._wrap(Method.parse(method, handler.response_streaming), handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: Method, handler: grpc.RpcMethodHandler[_Req, _Resp]
    ) -> grpc.RpcMethodHandler[_Req, _Resp]:
        codec: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._observed(method, handler.unary_unary), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._observed(method, handler.unary_stream), **codec
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._observed(method, handler.stream_unary), **codec
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._observed(method, handler.stream_stream), **codec
        )

    def _observed(self, method: Method, behaviour: Any) -> Any:
        """`behaviour` timed, in the same shape (grpc.aio picks its API by the shape:
        an async generator yields messages, a coroutine returns one or uses
        `context.write`); a plain function (the sync API) is left as it is."""
        finish = self._finish
        if inspect.isasyncgenfunction(behaviour):

            async def observed_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    async for message in behaviour(request, context):
                        yield message
                except BaseException as error:
                    code = raised_code(context, error)
                    finish(method, code, time.perf_counter() - start, request, context, None)
                    raise
                code = returned_code(context)
                finish(method, code, time.perf_counter() - start, request, context, None)

            return observed_stream
        if not inspect.iscoroutinefunction(behaviour):
            return behaviour

        async def observed(request: Any, context: _Context) -> Any:
            start = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                code = raised_code(context, error)
                finish(method, code, time.perf_counter() - start, request, context, None)
                raise
            code = returned_code(context)
            finish(method, code, time.perf_counter() - start, request, context, response)
            return response

        return observed

    def _finish(
        self,
        method: Method,
        code: grpc.StatusCode,
        seconds: float,
        request: Any,
        context: _Context,
        response: Any,
    ) -> None:
        # Observability must never change a call's outcome.
        try:
            for sink in self._sinks:
                sink(method, code, seconds, request, context, response)
        except Exception:
            log.exception("recording %s/%s failed", method.service, method.name)
