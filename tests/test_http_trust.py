"""The trust work applies to HTTP calls as to gRPC ones: bearer tokens and roles, the
limits (per peer across both protocols), draining, metrics and the access log, the
safe defaults for the HTTP address, and the setting itself."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
from _certs import make_certificates
from _http import CONNECT_STREAM_JSON, Envelopes, envelope, error_info, serving
from _security import ADMIN_TOKEN, READER_TOKEN, write_tokens
from _streams import until
from prometheus_client.parser import text_string_to_metric_families

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc
from runcontrol_server.app import ConfigurationError, ListenError, RunControlServer
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.http.context import grpc_peer
from runcontrol_server.observability.logs import ACCESS_LOGGER, FIELDS_ATTRIBUTE
from runcontrol_server.security.exposure import settings_problem


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_tokens_and_roles_guard_http_calls(tmp_path: Path) -> None:
    settings = Settings(tokens_file=write_tokens(tmp_path / "tokens"))
    async with serving(settings) as http:
        missing = await http.call("CreateRun", {"threadId": "t"})
        assert missing.status_code == 401
        assert missing.json()["code"] == "unauthenticated"
        info = error_info(missing.json())
        assert info.reason == "UNAUTHENTICATED"
        assert dict(info.metadata) == {"method": "CreateRun", "required_role": "admin"}

        wrong_scheme = await http.call("ListRuns", headers={"authorization": "Basic abc"})
        assert wrong_scheme.json()["code"] == "unauthenticated"

        too_low = await http.call("CreateRun", {"threadId": "t"}, headers=bearer(READER_TOKEN))
        assert too_low.status_code == 403
        assert too_low.json()["code"] == "permission_denied"
        assert error_info(too_low.json()).metadata["role"] == "reader"

        created = await http.call("CreateRun", {"threadId": "t"}, headers=bearer(ADMIN_TOKEN))
        assert created.status_code == 200, created.text
        listed = await http.call("ListRuns", headers=bearer(READER_TOKEN))
        assert len(listed.json()["runs"]) == 1

        # A stream is guarded too: its end-of-stream message says why.
        async with http.client.stream(
            "POST",
            http.url("WatchRuns"),
            content=envelope(b"{}"),
            headers=CONNECT_STREAM_JSON,
        ) as response:
            end = await Envelopes(response).end_json()
        assert end["error"]["code"] == "unauthenticated"


async def test_one_client_host_holds_its_watch_slots_across_both_protocols() -> None:
    async with serving(Settings(max_watchers_per_peer=1)) as http:
        async with http.client.stream(
            "POST",
            http.url("WatchRuns"),
            content=envelope(b'{"sendInitial": true}'),
            headers=CONNECT_STREAM_JSON,
        ) as response:
            messages = Envelopes(response)  # held: dropping it would close the stream
            assert (await messages.next_json()).get("endOfInitialSet") is True
            async with grpc.aio.insecure_channel(http.grpc_address) as channel:
                stub = run_control_pb2_grpc.RunControlStub(channel)
                call = stub.WatchRuns(pb.WatchRunsRequest())
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_payload_and_message_limits_apply() -> None:
    async with serving(Settings(max_payload_bytes=1024, max_message_bytes=80_000)) as http:
        big = {"threadId": "t", "metadata": {"blob": "x" * 2000}}
        refused = await http.call("CreateRun", big)
        assert refused.status_code == 429  # Connect's HTTP status for resource_exhausted
        info = error_info(refused.json())
        assert info.reason == "LIMIT_EXCEEDED"
        assert dict(info.metadata) == {"limit": "max_payload_bytes", "field": "metadata"}

        # Past the message size the request is refused before any handler, as by gRPC.
        huge = await http.call("CreateRun", {"threadId": "t", "kwargsJson": "x" * 100_000})
        assert huge.json()["code"] == "resource_exhausted"
        assert "details" not in huge.json()


async def test_calls_at_once_are_bounded_like_the_grpc_port() -> None:
    async with serving(Settings(max_concurrent_rpcs=1)) as http:
        async with http.client.stream(
            "POST",
            http.url("WatchRuns"),
            content=envelope(b'{"sendInitial": true}'),
            headers=CONNECT_STREAM_JSON,
        ) as response:
            messages = Envelopes(response)  # held: dropping it would close the stream
            assert (await messages.next_json()).get("endOfInitialSet") is True
            refused = await http.call("ListRuns")
        assert refused.json()["code"] == "resource_exhausted"

        async def served() -> bool:
            return (await http.call("ListRuns")).status_code == 200

        # The stream's slot is free once the server has seen the client go.
        await until(served, "a call is served after the stream ended")


async def test_a_draining_server_refuses_new_http_calls() -> None:
    async with serving() as http:
        await http.server.begin_drain()
        refused = await http.call("ListRuns")
    assert refused.status_code == 503
    assert error_info(refused.json()).reason == "SHUTTING_DOWN"


async def test_http_calls_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    settings = Settings(metrics_listen="127.0.0.1:0", access_log=True)
    async with serving(settings) as http:
        run_id = (await http.call("CreateRun", {"threadId": "seen"})).json()["run"]["runId"]
        assert (await http.call("GetRun", {"runId": "missing"})).status_code == 404
        address = http.server.metrics_address
        assert address is not None
        text = await asyncio.to_thread(_scrape, address)
    calls = {
        (sample.labels["method"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "runcontrol_rpcs_total"
    }
    assert calls[("CreateRun", "OK")] == 1
    assert calls[("GetRun", "NOT_FOUND")] == 1

    lines = [getattr(r, FIELDS_ATTRIBUTE) for r in caplog.records if r.name == ACCESS_LOGGER]
    created = next(line for line in lines if line["method"] == "CreateRun")
    assert created["code"] == "OK"
    assert created["run_id"] == run_id
    assert created["thread_id"] == "seen"
    assert created["peer"].startswith("ipv4:127.0.0.1:")
    assert created["protocol"] == "connect"
    assert any(line["method"] == "GetRun" and line["code"] == "NOT_FOUND" for line in lines)


async def test_http_calls_are_traced_as_children_of_the_caller_s_span() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # The process's provider can be set once: join it when another test module did.
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    caller = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    try:
        async with serving(Settings(otel=True)) as http:
            assert (await http.call("ListRuns", headers=caller)).status_code == 200
    finally:
        exporter.shutdown()  # later spans of the session are not kept
    (span,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/ListRuns")]
    assert span.name == "/runcontrol.v1.RunControl/ListRuns"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return answer.read().decode()  # type: ignore[no-any-return]


async def test_http_is_off_by_default_and_a_taken_port_is_a_listen_error() -> None:
    off = RunControlServer(Settings(listen="127.0.0.1:0"))
    await off.start()
    try:
        assert off.http_address is None
    finally:
        await off.stop(grace=0)

    async with serving() as http:
        taken = http.server.http_address
        other = RunControlServer(Settings(listen="127.0.0.1:0", http_listen=taken))
        with pytest.raises(ListenError, match="cannot serve HTTP on"):
            await other.start()
        await other.stop(grace=0)


async def test_the_http_listener_has_the_grpc_port_s_tls(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    settings = Settings(
        tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca
    )
    with_certificate = ssl.create_default_context(cafile=certs.ca)
    with_certificate.load_cert_chain(*certs.client("ops"))
    async with serving(settings, tls=with_certificate) as http:
        assert (await http.call("ListRuns")).status_code == 200
        # Mutual TLS: a client without a certificate the CA signed gets no answer.
        without = ssl.create_default_context(cafile=certs.ca)
        async with httpx.AsyncClient(verify=without, base_url=str(http.client.base_url)) as bare:
            with pytest.raises(httpx.TransportError):
                await bare.post(http.url("ListRuns"), json={})


async def test_without_the_http_extra_the_setting_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the http extra were not installed: importing uvicorn fails.
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.delitem(sys.modules, "runcontrol_server.http.listener", raising=False)
    with pytest.raises(ConfigurationError, match=r"runcontrol\[http\]"):
        RunControlServer(Settings(http_listen="127.0.0.1:0"))


def test_peers_read_as_grpc_writes_them() -> None:
    # Per-peer limits and the access log see one client host the same over both ports.
    assert grpc_peer("10.0.0.5:41234") == "ipv4:10.0.0.5:41234"
    assert grpc_peer("::1:5000") == "ipv6:[::1]:5000"
    assert grpc_peer(None) == "unknown"


def test_the_http_listen_setting_and_its_safe_default() -> None:
    assert Settings().http_listen is None
    assert parse_settings(["--http-listen", "127.0.0.1:8080"], {}).http_listen == "127.0.0.1:8080"
    from_env = parse_settings([], {"RUNCONTROL_HTTP_LISTEN": "[::1]:0"})
    assert from_env.http_listen == "[::1]:0"
    with pytest.raises(SystemExit):
        parse_settings(["--http-listen", "8080"], {})

    exposed = Settings(http_listen="0.0.0.0:8080")
    problem = settings_problem(exposed)
    assert problem is not None and "refusing to serve 0.0.0.0:8080" in problem
    assert settings_problem(Settings(http_listen="0.0.0.0:8080", insecure=True)) is None
