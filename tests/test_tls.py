"""TLS and mutual TLS, with certificates made at test time (`tests/_certs.py`).

Every client is tested end to end against a real server with TLS and token
authentication on: `AsyncClient` (unary calls and the watch stream), `Client`, and
the `runctl` console script as a subprocess, by arguments and by environment
variables. Servers bind 127.0.0.1; certificates name 127.0.0.1 and localhost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import pytest
from _certs import CertFiles, make_certificates
from _security import ADMIN_TOKEN, READER_TOKEN, WORKER_TOKEN, running, write_tokens
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runcontrol import AsyncClient, Client, RunStatus, Unauthenticated, WatchEvent
from runcontrol._auth import SecuritySettingError
from runcontrol.errors import RunControlError
from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings, parse_settings

RUNCTL = Path(sys.executable).parent / "runctl"
RUN_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _tls(certs: CertFiles, *, client_ca: bool = False) -> Settings:
    return Settings(
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca if client_ca else None,
    )


@pytest.fixture
async def secure_server(certs: CertFiles, tmp_path: Path) -> AsyncIterator[RunControlServer]:
    """TLS (no client certificates asked) and token authentication."""
    settings = dataclasses.replace(_tls(certs), tokens_file=write_tokens(tmp_path / "tokens"))
    async with running(settings) as server:
        yield server


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    status: int = response.status
    return status


# --- the transport ----------------------------------------------------------------------


async def test_tls_server_serves_clients_that_trust_its_ca(certs: CertFiles) -> None:
    async with running(_tls(certs)) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=_read(certs.ca))
        async with grpc.aio.secure_channel(server.address, credentials) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        async with AsyncClient(server.address, root_certificates=_read(certs.ca)) as client:
            handle = await client.create_run("t-tls")
            assert (await client.fetch_run(handle.run_id)).thread_id == "t-tls"


async def test_plaintext_and_untrusting_clients_cannot_connect(certs: CertFiles) -> None:
    async with running(_tls(certs)) as server:
        async with AsyncClient(server.address, timeout=5, retry=False) as plain:
            with pytest.raises(RunControlError) as refused:
                await plain.has_inflight("t")
            assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        # The system's roots do not include the test CA: the handshake fails.
        system_roots = grpc.ssl_channel_credentials()
        async with AsyncClient(
            server.address, credentials=system_roots, timeout=5, retry=False
        ) as untrusting:
            with pytest.raises(RunControlError) as untrusted:
                await untrusting.has_inflight("t")
            assert untrusted.value.code is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_only_certificates_the_client_ca_signed(
    certs: CertFiles,
) -> None:
    ca = _read(certs.ca)
    async with running(_tls(certs, client_ca=True)) as server:
        cert, key = (_read(p) for p in certs.client("worker-1"))
        async with AsyncClient(
            server.address, root_certificates=ca, client_certificate=cert, client_key=key
        ) as client:
            assert not (await client.has_inflight("t")).has_inflight
        stranger_cert, stranger_key = (_read(p) for p in certs.client("stranger"))
        for pair in ((None, None), (stranger_cert, stranger_key)):
            async with AsyncClient(
                server.address,
                root_certificates=ca,
                client_certificate=pair[0],
                client_key=pair[1],
                timeout=5,
                retry=False,
            ) as refused_client:
                with pytest.raises(RunControlError) as refused:
                    await refused_client.has_inflight("t")
                assert refused.value.code is grpc.StatusCode.UNAVAILABLE, pair[0] is None


# --- settings -----------------------------------------------------------------------------


def test_tls_settings_from_flags_and_environment(certs: CertFiles) -> None:
    flags = parse_settings(
        ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key], environ={}
    )
    env = parse_settings(
        [],
        environ={
            "RUNCONTROL_TLS_CERT": certs.server_cert,
            "RUNCONTROL_TLS_KEY": certs.server_key,
            "RUNCONTROL_TLS_CLIENT_CA": certs.ca,
        },
    )
    assert (flags.tls_cert, flags.tls_key, flags.tls_client_ca) == (
        certs.server_cert,
        certs.server_key,
        None,
    )
    assert (env.tls_cert, env.tls_key, env.tls_client_ca) == (
        certs.server_cert,
        certs.server_key,
        certs.ca,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca (mutual TLS) needs TLS"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "holds no PEM certificate"),
        (["--tls-cert", "{cert}", "--tls-key", "{cert}"], "holds no PEM private key"),
        (["--tls-cert", "/nonexistent.pem"], "cannot read certificate file /nonexistent.pem"),
    ],
)
def test_bad_tls_settings_are_usage_errors(
    certs: CertFiles, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"cert": certs.server_cert, "key": certs.server_key, "ca": certs.ca}
    with pytest.raises(SystemExit) as exited:
        parse_settings([arg.format(**files) for arg in args], environ={})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_client_tls_settings_are_checked() -> None:
    with pytest.raises(SecuritySettingError, match="go together"):
        Client("127.0.0.1:1", client_certificate=b"cert", client_key=None)
    with pytest.raises(SecuritySettingError, match="not both"):
        Client(
            "127.0.0.1:1",
            credentials=grpc.ssl_channel_credentials(),
            root_certificates=b"ca",
        )
    with grpc.insecure_channel("127.0.0.1:1") as channel, pytest.raises(ValueError, match="token"):
        Client(channel=channel, token=READER_TOKEN)


# --- every client, end to end with TLS and tokens -------------------------------------------


async def test_async_client_with_tls_and_token(
    secure_server: RunControlServer, certs: CertFiles
) -> None:
    ca = _read(certs.ca)
    async with (
        AsyncClient(secure_server.address, root_certificates=ca, token=ADMIN_TOKEN) as admin,
        AsyncClient(secure_server.address, root_certificates=ca, token=WORKER_TOKEN) as worker,
        AsyncClient(secure_server.address, root_certificates=ca, token=READER_TOKEN) as reader,
    ):
        handle = await admin.create_run("t-async")
        watch = reader.watch(thread_id="t-async", start_revision=handle.run.create_revision)
        first = await anext(watch)  # the stream carries the token too
        assert isinstance(first, WatchEvent) and first.run.run_id == handle.run_id
        await worker.set_status(handle.run_id, RunStatus.RUNNING, worker_id="w1")
        second = await anext(watch)
        assert isinstance(second, WatchEvent) and second.run.status is RunStatus.RUNNING
        await watch.aclose()  # type: ignore[attr-defined]  # an async generator
        assert (await reader.fetch_run(handle.run_id)).worker_id == "w1"


async def test_sync_client_with_tls_and_token(
    secure_server: RunControlServer, certs: CertFiles
) -> None:
    ca = _read(certs.ca)

    def calls() -> None:
        with Client(secure_server.address, root_certificates=ca, token=ADMIN_TOKEN) as admin:
            handle = admin.create_run("t-sync")
            assert admin.fetch_run(handle.run_id).thread_id == "t-sync"
        with (
            Client(secure_server.address, root_certificates=ca, token=None) as anonymous,
            pytest.raises(Unauthenticated),
        ):
            anonymous.fetch_run(handle.run_id)

    # The server runs on this test's loop: the blocking client runs in a thread.
    await asyncio.to_thread(calls)


async def test_clients_take_token_and_ca_from_the_environment(
    secure_server: RunControlServer, certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNCONTROL_TLS_CA", certs.ca)
    monkeypatch.setenv("RUNCONTROL_TOKEN", ADMIN_TOKEN)
    async with AsyncClient(secure_server.address) as client:
        handle = await client.create_run("t-env")

    def sync_call() -> str:
        with Client(secure_server.address) as blocking:
            return blocking.fetch_run(handle.run_id).thread_id

    assert await asyncio.to_thread(sync_call) == "t-env"
    # An explicit None wins over the environment.
    async with AsyncClient(secure_server.address, token=None) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.fetch_run(handle.run_id)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCONTROL_")}
    env.update(extra)
    return env


async def _runctl(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(RUNCTL),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()  # by this child's pid
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_runctl_with_tls_and_token_by_flags_and_environment(
    secure_server: RunControlServer, certs: CertFiles
) -> None:
    addr = secure_server.address
    tls = ("--addr", addr, "--tls-ca", certs.ca, "-o", "json")
    rc, out, err = await _runctl("create", "t-cli", *tls, "--token", ADMIN_TOKEN, env=_env())
    assert rc == 0, err
    run_id = json.loads(out)["run_id"]

    by_env = _env(RUNCONTROL_ADDR=addr, RUNCONTROL_TLS_CA=certs.ca, RUNCONTROL_TOKEN=READER_TOKEN)
    rc, out, err = await _runctl("get", run_id, "-o", "json", env=by_env)
    assert rc == 0, err
    assert json.loads(out)["thread_id"] == "t-cli"
    rc, out, err = await _runctl(
        "watch", "--thread", "t-cli", "--send-initial", "--max-events", "1", "-o", "json",
        env=by_env,
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["run"]["run_id"] == run_id
    rc, out, err = await _runctl("health", "-o", "json", env=by_env)
    assert (rc, json.loads(out)["status"]) == (0, "SERVING"), err

    # The reader may not cancel; no token at all is refused; a flag beats the variable.
    rc, _, err = await _runctl("cancel", run_id, env=by_env)
    assert rc == 1 and "error: PERMISSION_DENIED:" in err, err
    rc, _, err = await _runctl("get", run_id, *tls, env=_env())
    assert rc == 1 and "error: UNAUTHENTICATED:" in err, err
    rc, _, err = await _runctl("cancel", run_id, "--token", ADMIN_TOKEN, env=by_env)
    assert rc == 0, err


async def test_runctl_mutual_tls_and_unreadable_files(certs: CertFiles, tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", "reader cert:ops ops-cert")
    settings = dataclasses.replace(_tls(certs, client_ca=True), tokens_file=tokens)
    async with running(settings) as server:
        cert, key = certs.client("ops")
        env = _env(RUNCONTROL_TLS_CLIENT_CERT=cert, RUNCONTROL_TLS_CLIENT_KEY=key)
        tls = ("--addr", server.address, "--tls-ca", certs.ca)
        rc, _, err = await _runctl("list", *tls, env=env)  # the certificate's role
        assert rc == 0, err
        rc, _, err = await _runctl("list", *tls, "--tls-cert", cert, "--tls-key", key, env=_env())
        assert rc == 0, err
        rc, _, err = await _runctl("create", "t", *tls, env=env)
        assert rc == 1 and "PERMISSION_DENIED" in err, err
    rc, _, err = await _runctl("list", "--tls-ca", "/nonexistent/ca.pem", env=_env())
    assert rc == 2 and "/nonexistent/ca.pem" in err, err
    rc, _, err = await _runctl("list", env=_env(RUNCONTROL_TLS_CLIENT_CERT=cert))
    assert rc == 2 and "go together" in err, err
