"""OpenTelemetry tracing (`--otel`, the `otel` extra) with an in-memory span exporter.

The process's global tracer provider is set once here to an SDK provider exporting to
memory; a server with `otel=True` uses it (as it would use one an embedding
application or `opentelemetry-instrument` configured), and so does the instrumented
Python client.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from _streams import until

pytest.importorskip("opentelemetry.instrumentation.grpc")

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runcontrol import AsyncClient, Client, WatchEvent
from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol_server.app import ConfigurationError, RunControlServer
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.domain.manager import RunManager
from runcontrol_server.observability import Observability
from runcontrol_server.observability.logs import ACCESS_LOGGER
from runcontrol_server.stores.memory import InMemoryRunStore

SERVICE = "/runcontrol.v1.RunControl/"
WAIT = 10.0
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)  # once per process, as OpenTelemetry allows


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


async def finished(
    exporter: InMemorySpanExporter, condition: Callable[[Sequence[ReadableSpan]], bool]
) -> Sequence[ReadableSpan]:
    """The finished spans once `condition` holds: a stream's span ends when the server
    notices the client went away, which no message announces."""
    try:
        await until(
            lambda: condition(exporter.get_finished_spans()), "the awaited spans end", within=WAIT
        )
    except AssertionError as error:
        names = [span.name for span in exporter.get_finished_spans()]
        raise AssertionError(f"{error}; finished: {names}") from None
    return exporter.get_finished_spans()


def server_spans(spans: Sequence[ReadableSpan], method: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == SERVICE + method and s.kind is SpanKind.SERVER]


async def test_a_server_span_per_call_with_method_and_code(spans: InMemorySpanExporter) -> None:
    async with serve_in_process(settings=Settings(otel=True)) as server:
        stub = server.stub
        created = await stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetRun(pb.GetRunRequest(run_id="missing"))
        # WatchRuns is a coroutine writing with context.write: it must stream as usual.
        watch = stub.WatchRuns(pb.WatchRunsRequest(thread_id="t1", send_initial=True))
        first = await watch.read()
        assert [e.run.run_id for e in first.events] == [created.run.run_id]
        watch.cancel()
        done = await finished(spans, lambda s: len(server_spans(s, "WatchRuns")) == 1)

    (create,) = server_spans(done, "CreateRun")
    assert create.attributes is not None
    assert create.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert create.attributes["rpc.service"] == "runcontrol.v1.RunControl"
    assert create.attributes["rpc.method"] == "CreateRun"
    assert create.status.status_code is StatusCode.UNSET
    (missing,) = server_spans(done, "GetRun")
    assert missing.attributes is not None
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # A caller's mistake is not a server error (OpenTelemetry's gRPC conventions).
    assert missing.status.status_code is StatusCode.UNSET
    (streamed,) = server_spans(done, "WatchRuns")
    assert streamed.attributes is not None
    assert streamed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_a_server_error_marks_the_span(spans: InMemorySpanExporter) -> None:
    async with serve_in_process(settings=Settings(otel=True)) as server:
        await server.server.begin_drain()  # new calls: UNAVAILABLE / SHUTTING_DOWN
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.stub.GetRun(pb.GetRunRequest(run_id="x"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    (span,) = server_spans(spans.get_finished_spans(), "GetRun")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code is StatusCode.ERROR


async def test_trace_context_passes_through_the_python_client(
    spans: InMemorySpanExporter,
) -> None:
    instrumentor = GrpcAioInstrumentorClient()
    instrumentor.instrument(tracer_provider=PROVIDER)
    try:
        async with serve_in_process(settings=Settings(otel=True)) as server:
            tracer = PROVIDER.get_tracer("caller")
            async with AsyncClient(server.address) as client:
                with tracer.start_as_current_span("handle-request") as caller:
                    handle = await client.create_run("t1")
                # The resuming watch works through the client interceptors too.
                watch = client.watch(thread_id="t1", send_initial=True)
                first = await anext(aiter(watch))
                assert isinstance(first, WatchEvent) and first.run.run_id == handle.run_id
                await watch.aclose()
    finally:
        instrumentor.uninstrument()

    done = spans.get_finished_spans()
    (server_span,) = server_spans(done, "CreateRun")
    (client_span,) = [
        s for s in done if s.name == SERVICE + "CreateRun" and s.kind is SpanKind.CLIENT
    ]
    caller_context = caller.get_span_context()
    assert client_span.parent is not None
    assert client_span.parent.span_id == caller_context.span_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.is_remote
    assert server_span.context.trace_id == caller_context.trace_id
    assert handle.run_id


async def test_the_blocking_client_carries_trace_context_too(
    spans: InMemorySpanExporter,
) -> None:
    instrumentor = GrpcInstrumentorClient()
    instrumentor.instrument(tracer_provider=PROVIDER)
    try:
        async with serve_in_process(settings=Settings(otel=True)) as server:

            def call() -> trace.SpanContext:
                with (
                    Client(server.address) as client,
                    PROVIDER.get_tracer("caller").start_as_current_span("job") as caller,
                ):
                    client.has_inflight("t1")
                    return caller.get_span_context()

            caller_context = await asyncio.to_thread(call)  # the server runs on this loop
    finally:
        instrumentor.uninstrument()
    done = spans.get_finished_spans()
    (server_span,) = server_spans(done, "HasInflight")
    (client_span,) = [s for s in done if s.kind is SpanKind.CLIENT]
    assert client_span.parent is not None and client_span.parent.span_id == caller_context.span_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id


async def test_access_lines_carry_the_trace_id(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with serve_in_process(settings=Settings(otel=True, access_log=True)) as server:
        await server.stub.ListRuns(pb.ListRunsRequest())
    (span,) = server_spans(spans.get_finished_spans(), "ListRuns")
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.rpc["trace_id"] == trace.format_trace_id(span.context.trace_id)


async def test_tracing_off_adds_nothing(spans: InMemorySpanExporter) -> None:
    manager = RunManager(InMemoryRunStore())
    assert Observability(Settings(), manager).interceptors == ()
    async with serve_in_process() as server:
        await server.stub.ListRuns(pb.ListRunsRequest())
    assert spans.get_finished_spans() == ()


def test_missing_extra_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the otel extra were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.grpc", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.grpc._aio_server", None)
    monkeypatch.delitem(sys.modules, "runcontrol_server.observability.tracing")
    with pytest.raises(ConfigurationError, match=r"runcontrol\[otel\]"):
        RunControlServer(Settings(otel=True))


def test_own_provider_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from runcontrol_server.observability.tracing import _otlp_provider

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = _otlp_provider()
    assert provider.resource.attributes["service.name"] == "runcontrol"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "runs-eu")
    provider = _otlp_provider()
    assert provider.resource.attributes["service.name"] == "runs-eu"
    provider.shutdown()


def test_otel_setting() -> None:
    assert Settings().otel is False
    assert parse_settings(["--otel"], {}).otel is True
    assert parse_settings([], {"RUNCONTROL_OTEL": "1"}).otel is True
    assert parse_settings([], {"RUNCONTROL_OTEL": "off"}).otel is False
