"""The server entry point: settings, process lifecycle, health, reflection and drain.

Process tests run the real `python -m runcontrol_server` on 127.0.0.1 port 0 and
learn the port from the first stdout line. Drain tests run `RunControlServer`
in-process so the draining window can be held open without racing a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _certs import make_certificates
from _security import write_tokens
from _server_process import (
    EXIT_TIMEOUT,
    STARTUP_TIMEOUT,
    clean_env,
    server_process,
)
from _streams import until
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from runcontrol.errors import from_grpc_error
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc as pb_grpc
from runcontrol_server.app import RUN_CONTROL_SERVICE, RunControlServer, connection_options
from runcontrol_server.config import OPTIONS, Settings, build_parser, parse_settings
from runcontrol_server.domain.manager import RunManager
from runcontrol_server.stores.memory import InMemoryRunStore

CALL_TIMEOUT = 5.0


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(
        health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
    )
    status: int = response.status
    return status


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=CALL_TIMEOUT
    )
    names: set[str] = set()
    async for response in call:
        names.update(s.name for s in response.list_services_response.service)
    return names


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status details")


# --- the real process ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_process_serves_health_reflection_and_runs_then_exits_0_on_signal(
    signum: signal.Signals,
) -> None:
    # An hour of grace: a stop that waited it out could not end within EXIT_TIMEOUT.
    grace = ("--grace-period", "3600")
    async with server_process("--listen", "127.0.0.1:0", *grace) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            serving = health_pb2.HealthCheckResponse.SERVING
            assert await _health(channel, "") == serving
            assert await _health(channel, RUN_CONTROL_SERVICE) == serving

            services = await _reflected_services(channel)
            assert {RUN_CONTROL_SERVICE, "grpc.health.v1.Health"} <= services

            stub = pb_grpc.RunControlStub(channel)
            created = await stub.CreateRun(
                pb.CreateRunRequest(thread_id="thread-1"), timeout=CALL_TIMEOUT
            )
            got = await stub.GetRun(
                pb.GetRunRequest(run_id=created.run.run_id), timeout=CALL_TIMEOUT
            )
            assert got.run == created.run

        # Nothing is in flight, so the grace period is not waited out.
        assert await server.stop(signum) == 0
        assert await server.stdout_rest == b"", "stdout carries only the listening line"


async def test_process_takes_listen_from_environment() -> None:
    env = clean_env(RUNCONTROL_LISTEN="127.0.0.1:0")
    async with server_process(env=env) as server:
        # server_process already checked the line names 127.0.0.1 and a real port.
        async with grpc.aio.insecure_channel(server.address) as channel:
            assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert await server.stop(signal.SIGTERM) == 0


async def run_to_exit(*args: str) -> tuple[int | None, bytes, bytes]:
    """Run the entry point with `args` until it exits on its own (bounded)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runcontrol_server",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
    return proc.returncode, out, err


async def test_process_exits_1_when_the_port_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_to_exit("--listen", f"127.0.0.1:{port}")
    assert code == 1
    assert out == b"", "nothing may claim to be listening"
    assert f"cannot listen on 127.0.0.1:{port}".encode() in err
    assert b"Traceback" not in err


async def test_process_exits_1_when_the_database_is_out_of_reach() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        url = f"postgresql://runcontrol:hunter2@127.0.0.1:{port}/runcontrol"
        code, out, err = await run_to_exit("--listen", "127.0.0.1:0", "--store", url)
    assert code == 1
    assert out == b"", "nothing may claim to be listening"
    assert b"cannot connect to the database" in err
    assert b"Traceback" not in err
    assert b"hunter2" not in err, "the password must never be logged"


def test_help_lists_every_flag_with_its_env_var_and_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runcontrol_server", "--help"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0
    # argparse wraps help text; compare with whitespace collapsed.
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
    assert "default 127.0.0.1:50051" in text
    assert "default 5.0" in text


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "no-port"], {}, "argument --listen"),
        (["--grace-period", "-1"], {}, "argument --grace-period"),
        ([], {"RUNCONTROL_MAX_PAYLOAD_BYTES": "0"}, "RUNCONTROL_MAX_PAYLOAD_BYTES"),
        ([], {"RUNCONTROL_LOG_LEVEL": "chatty"}, "RUNCONTROL_LOG_LEVEL"),
    ],
)
def test_process_rejects_invalid_values_with_usage_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runcontrol_server", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        env=clean_env(**env),
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ")
    assert message in result.stderr
    assert result.stdout == ""


# Values past what grpc holds (C ints; whole milliseconds in an int) used to stop the
# server at start with an OverflowError traceback; a near-zero progress interval would
# have every stream send progress in a busy loop.
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--keepalive-time", "1e20", "at most 2147483"),
        ("--keepalive-timeout", "2147484", "at most 2147483"),
        ("--max-connection-age", "1e20", "at most 2147483"),
        ("--max-connection-age-grace", "1e20", "at most 2147483"),
        ("--max-message-bytes", "2147483648", "at most 2147483647"),
        ("--max-concurrent-rpcs", "99999999999", "at most 2147483647"),
        ("--max-payload-bytes", "1073709056", "at most 1073709055"),
        ("--history-max-age", "1e20", "at most 316224000"),
        ("--progress-interval", "1e-300", "between 0.1 and 3600"),
        ("--progress-interval", "7200", "between 0.1 and 3600"),
    ],
)
def test_values_beyond_what_grpc_holds_are_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings([flag, value], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert message in err


def test_the_largest_accepted_connection_times_fit_grpc() -> None:
    settings = parse_settings(
        [
            *("--keepalive-time", "2147483", "--keepalive-timeout", "2147483"),
            *("--max-connection-age", "2147483", "--max-connection-age-grace", "2147483"),
            *("--max-message-bytes", "2147483647", "--max-concurrent-rpcs", "2147483647"),
        ],
        {},
    )
    assert all(0 < value <= 2**31 - 1 for _, value in connection_options(settings))


# --- settings resolution (in-process) -------------------------------------------------


def test_defaults() -> None:
    assert parse_settings([], {}) == Settings(
        listen="127.0.0.1:50051",
        grace_period=5.0,
        max_payload_bytes=1 << 20,
        log_level="INFO",
        page_token_key=None,
        max_concurrent_rpcs=None,
    )


def test_flag_wins_over_env_and_env_over_default() -> None:
    env = {"RUNCONTROL_LISTEN": "127.0.0.1:7001", "RUNCONTROL_GRACE_PERIOD": "2.5"}
    settings = parse_settings(["--listen", "127.0.0.1:7002"], env)
    assert settings.listen == "127.0.0.1:7002"
    assert settings.grace_period == 2.5
    assert settings.max_payload_bytes == 1 << 20


def test_every_setting_has_a_flag_and_an_env_var(tmp_path: Path) -> None:
    # One value per row that differs from the default, given once by flag, once by env.
    certs = make_certificates(tmp_path)
    tokens = write_tokens(tmp_path / "tokens")
    values = {
        "listen": "[::1]:0",
        "grace_period": "0.5",
        "max_payload_bytes": "1024",
        "log_level": "debug",
        "page_token_key": "0123456789abcdef-shared",
        "max_concurrent_rpcs": "8",
        "loop": "asyncio",
        "retention": "0",
        "max_watchers": "7",
        "progress_interval": "0.25",
        "max_message_bytes": "5000000",
        "max_active_runs_per_thread": "3",
        "max_stored_runs": "40",
        "max_waiters": "9",
        "max_watchers_per_peer": "5",
        "max_waiters_per_peer": "6",
        "history_size": "50",
        "history_max_age": "0",
        "store": "postgresql://rc:secret@127.0.0.1:5432/rc",
        "pool_size": "3",
        "keepalive_time": "0",
        "keepalive_timeout": "1.5",
        "max_connection_age": "0",
        "max_connection_age_grace": "2",
        "tls_cert": certs.server_cert,
        "tls_key": certs.server_key,
        "tls_client_ca": certs.ca,
        "tokens_file": tokens,
        "insecure": "1",  # a switch: its flag takes no value
        "metrics_listen": "127.0.0.1:9464",
        "log_format": "json",
        "access_log": "1",
        "otel": "1",
        "http_listen": "127.0.0.1:8080",
        "http_cors_origin": "https://page.example",  # repeatable; one here
        "http_allowed_host": "runs.example",  # repeatable; one here
    }
    assert set(values) == {o.name for o in OPTIONS}
    argv = [a for o in OPTIONS for a in ((o.flag,) if o.switch else (o.flag, values[o.name]))]
    from_flags = parse_settings(argv, {})
    from_env = parse_settings([], {o.env: values[o.name] for o in OPTIONS})
    assert from_flags == from_env
    assert from_env == Settings(
        "[::1]:0",
        0.5,
        1024,
        "DEBUG",
        "0123456789abcdef-shared",
        8,
        loop="asyncio",
        retention=0.0,
        max_watchers=7,
        progress_interval=0.25,
        max_message_bytes=5_000_000,
        max_active_runs_per_thread=3,
        max_stored_runs=40,
        max_waiters=9,
        max_watchers_per_peer=5,
        max_waiters_per_peer=6,
        history_size=50,
        history_max_age=0.0,
        store="postgresql://rc:secret@127.0.0.1:5432/rc",
        pool_size=3,
        keepalive_time=0.0,
        keepalive_timeout=1.5,
        max_connection_age=0.0,
        max_connection_age_grace=2.0,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca,
        tokens_file=tokens,
        insecure=True,
        metrics_listen="127.0.0.1:9464",
        log_format="json",
        access_log=True,
        otel=True,
        http_listen="127.0.0.1:8080",
        http_cors_origin=("https://page.example",),
        http_allowed_host=("runs.example",),
    )


def test_store_url_is_checked_and_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--store", "mysql://rc:hunter2@db/rc"], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--store" in err and "hunter2" not in err
    settings = parse_settings([], {"RUNCONTROL_STORE": "postgresql://rc:hunter2@db/rc"})
    assert "hunter2" not in repr(settings)


def test_empty_env_var_counts_as_unset() -> None:
    assert parse_settings([], {"RUNCONTROL_LISTEN": ""}).listen == "127.0.0.1:50051"


def test_secret_is_not_echoed_or_logged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings([], {"RUNCONTROL_PAGE_TOKEN_KEY": "hunter2"})
    assert exited.value.code == 2
    assert "hunter2" not in capsys.readouterr().err
    settings = parse_settings([], {"RUNCONTROL_PAGE_TOKEN_KEY": "x" * 32})
    assert "x" * 32 not in repr(settings)


def test_help_text_is_built_from_the_table() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "default random per process" in text
    assert "default unlimited" in text


# --- drain and grace (in-process) -----------------------------------------------------


class GatedStore:
    """An in-memory store whose `get_run` waits on a gate: a call that stays in flight.

    Only the timing changes; every answer still comes from the real store.
    """

    def __init__(self) -> None:
        self.inner = InMemoryRunStore()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_run(self, run_id: str) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.get_run(run_id)

    async def close(self) -> None:
        self.closed = True
        await self.inner.close()


@contextlib.asynccontextmanager
async def in_process_server(
    store: Any = None, grace: float = 5.0
) -> AsyncIterator[tuple[RunControlServer, grpc.aio.Channel]]:
    settings = Settings(listen="127.0.0.1:0", grace_period=grace)
    manager = RunManager(store if store is not None else InMemoryRunStore())
    server = RunControlServer(settings, manager=manager)
    address = await server.start()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address)
    assert not address.endswith(":0")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield server, channel
    finally:
        await asyncio.wait_for(server.stop(0), EXIT_TIMEOUT)


async def test_draining_reports_not_serving_and_refuses_new_calls_with_shutting_down() -> None:
    async with in_process_server() as (server, channel):
        stub = pb_grpc.RunControlStub(channel)
        created = await stub.CreateRun(pb.CreateRunRequest(thread_id="t"), timeout=CALL_TIMEOUT)
        revision = created.run.mod_revision

        await server.begin_drain()
        assert server.draining

        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _health(channel, "") == not_serving
        assert await _health(channel, RUN_CONTROL_SERVICE) == not_serving
        # Reflection keeps answering: it is metadata, not work.
        assert RUN_CONTROL_SERVICE in await _reflected_services(channel)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id), timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        info = _error_info(refused.value)
        assert (info.domain, info.reason) == ("runcontrol", "SHUTTING_DOWN")
        assert info.metadata["revision"] == str(revision)

        # Streaming methods are refused the same way, not left hanging.
        watch = stub.WatchRuns(pb.WatchRunsRequest(), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
            async for _ in watch:
                pass
        assert refused_stream.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _error_info(refused_stream.value).reason == "SHUTTING_DOWN"


async def test_in_flight_call_finishes_within_the_grace_period() -> None:
    store = GatedStore()
    async with in_process_server(store) as (server, channel):
        stub = pb_grpc.RunControlStub(channel)
        created = await stub.CreateRun(pb.CreateRunRequest(thread_id="t"), timeout=CALL_TIMEOUT)
        in_flight = asyncio.ensure_future(
            stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id), timeout=CALL_TIMEOUT)
        )
        await asyncio.wait_for(store.entered.wait(), CALL_TIMEOUT)

        stopping = asyncio.ensure_future(server.stop(grace=5.0))

        async def grpc_is_stopping() -> bool:
            # The drain refuses a new call with SHUTTING_DOWN; once grpc's own stop has
            # begun (the last step before the store closes) the call is refused below it.
            try:
                await stub.HasInflight(pb.HasInflightRequest(thread_id="probe"), timeout=1)
            except grpc.aio.AioRpcError as refused:
                below = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                error = from_grpc_error(refused)
                return error.code in below and error.reason != "SHUTTING_DOWN"
            return False

        await until(grpc_is_stopping, "grpc's stop has begun")
        assert server.draining
        assert not stopping.done(), "stop must wait for the in-flight call"
        assert not store.closed, "the store was closed under an in-flight call"

        store.gate.set()
        response = await asyncio.wait_for(in_flight, CALL_TIMEOUT)
        assert response.run.run_id == created.run.run_id
        await asyncio.wait_for(stopping, EXIT_TIMEOUT)
        assert store.closed, "the store is closed once the server has stopped"


async def test_grace_period_bounds_a_call_that_never_finishes() -> None:
    store = GatedStore()
    async with in_process_server(store) as (server, channel):
        stub = pb_grpc.RunControlStub(channel)
        created = await stub.CreateRun(pb.CreateRunRequest(thread_id="t"), timeout=CALL_TIMEOUT)
        # No deadline of its own: only the grace period can end this call, and a stop
        # that did not enforce it would never return.
        stuck = asyncio.ensure_future(stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id)))
        await asyncio.wait_for(store.entered.wait(), CALL_TIMEOUT)

        await asyncio.wait_for(server.stop(grace=0.3), EXIT_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(stuck, CALL_TIMEOUT)
        assert store.closed
