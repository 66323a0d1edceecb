"""OpenTelemetry server spans (`--otel`, the `otel` extra), through
opentelemetry-instrumentation-grpc.

A SERVER span per call, named by the full method ("/runcontrol.v1.RunControl/GetRun"),
child of the caller's span when the call carries trace context (`traceparent`
metadata, as the instrumented Python client sends), with `rpc.grpc.status_code`
set from the call's final code; server-side errors (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) also mark the span ERROR, as the
semantic conventions ask; a client's own mistakes (NOT_FOUND, INVALID_ARGUMENT...)
do not.

Why a subclass of the instrumentation's grpc.aio interceptor (from a private module of
it, hence the version range of the extra): its span (name, attributes, remote context,
OTEL_PYTHON_GRPC_EXCLUDED_SERVICES) is what we want, but as shipped it iterates every
server-stream handler as an async generator, which breaks WatchRuns (a coroutine
writing with `context.write`), and it misses codes set by `abort_with_status` (every
error here). Those two wrappers are replaced; the rest is the library's. Nothing here
is imported unless tracing is on: off, it costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from .codes import raised_code, returned_code

DEFAULT_SERVICE_NAME = "runcontrol"
# Codes that mean the server failed, so the span is an error (OTel gRPC conventions).
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_Context = grpc.aio.ServicerContext[Any, Any]


class Tracing:
    """The tracer provider and the server interceptor.

    The provider is the process's global one when the process configured an SDK
    provider itself (`opentelemetry-instrument`, an embedding application, a test);
    otherwise one of our own exporting OTLP as the standard OTEL_* environment
    variables say (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME ...), flushed and
    shut down with the server.
    """

    def __init__(self) -> None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            self.provider, self._owned = current, False
        else:
            self.provider, self._owned = _otlp_provider(), True
        tracer = trace.get_tracer(__name__, tracer_provider=self.provider)
        # The instrumentation's code is unannotated, hence the ignores on calls into it.
        self.interceptor: grpc.aio.ServerInterceptor = _ServerInterceptor(tracer)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Export what is buffered (when the provider is ours)."""
        if self._owned:
            self.provider.shutdown()


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (for the access log), if any."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def _otlp_provider() -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _end(span: Span, code: grpc.StatusCode) -> None:
    # An exception leaving the span is recorded on it by the span's context manager.
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))


class _ServerInterceptor(OpenTelemetryAioServerInterceptor):
    def _intercept_aio_server_unary(
        self, behavior: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        # Also serves coroutine server-stream handlers (they return, not yield).
        async def traced(request: Any, context: _Context) -> Any:
            with (
                self._set_remote_context(context),
                self._start_span(handler_call_details, context) as span,  # type: ignore[no-untyped-call]
            ):
                try:
                    response = await behavior(request, context)
                except BaseException as error:
                    _end(span, raised_code(context, error))
                    raise
                _end(span, returned_code(context))
                return response

        return traced

    def _intercept_aio_server_stream(
        self, behavior: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            return self._intercept_aio_server_unary(behavior, handler_call_details)

        async def traced_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            with (
                self._set_remote_context(context),
                self._start_span(handler_call_details, context) as span,  # type: ignore[no-untyped-call]
            ):
                try:
                    async for message in behavior(request, context):
                        yield message
                except BaseException as error:
                    _end(span, raised_code(context, error))
                    raise
                _end(span, returned_code(context))

        return traced_stream
