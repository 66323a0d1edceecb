"""Token authentication and roles: the tokens file, the role of every RPC over the
wire, ErrorInfo on refusals, client-certificate identities, secrecy of tokens, and
reloading the file (in-process and by SIGHUP to the real entry point)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from _certs import CertFiles, make_certificates
from _security import (
    ADMIN_TOKEN,
    CALL_TIMEOUT,
    READER_TOKEN,
    TOKENS,
    WORKER_TOKEN,
    eventually,
    running,
    write_tokens,
)
from _server_process import server_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runcontrol import AsyncClient, PermissionDenied, RunStatus, Unauthenticated
from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc
from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.security.roles import METHOD_ROLES, Role, required_role
from runcontrol_server.security.tokens import Identity, TokensFileError, parse_tokens

SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]
MISSING = "no-such-run"


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- the tokens file -----------------------------------------------------------------------


def test_tokens_file_entries() -> None:
    credentials = parse_tokens(
        "# comment\n\n"
        f"admin {ADMIN_TOKEN} ops   # trailing comment\n"
        f"READER {READER_TOKEN}\n"
        "worker cert:worker-1 w1\n"
        "reader cert:worker-1.internal\n"
    )
    assert credentials.for_token(ADMIN_TOKEN) == Identity("ops", Role.ADMIN)
    assert credentials.for_token(READER_TOKEN) == Identity("line 4", Role.READER)
    assert credentials.for_token(WORKER_TOKEN) is None
    assert credentials.for_token(ADMIN_TOKEN[:-1]) is None
    # A certificate matching several entries gets the highest of their roles.
    both = ("worker-1", "worker-1.internal")
    assert credentials.for_certificate(both) == Identity("w1", Role.WORKER)
    assert credentials.for_certificate(("worker-1.internal",)) == Identity("line 6", Role.READER)
    assert credentials.for_certificate(("someone",)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root abcdefghijklmnopqrstuvwxyz", "line 1: unknown role 'root'"),
        ("admin", "line 1: expected ROLE CREDENTIAL [NAME]"),
        ("admin tok-abcdefghijklmnop name extra", "line 1: expected ROLE CREDENTIAL [NAME]"),
        ("\n\nadmin short-token", "line 3: a token must be 16 to 4096 characters long"),
        ("admin tokén-abcdefghijklmnop", "line 1: a token must be visible ASCII"),
        ("admin cert:", "line 1: cert: needs the certificate's CN or SAN"),
        (
            f"admin {ADMIN_TOKEN} a\nreader {ADMIN_TOKEN} b",
            "line 2: the same token is already on line 1",
        ),
        ("admin cert:x\nreader cert:x", "line 2: certificate identity 'x' is already on line 1"),
        ("# nothing but comments\n", "no entries: every call would be refused"),
    ],
)
def test_tokens_file_errors_name_the_line_and_never_the_token(text: str, message: str) -> None:
    with pytest.raises(TokensFileError) as raised:
        parse_tokens(text, source="tokens.txt")
    assert message in str(raised.value)
    assert str(raised.value).startswith("tokens.txt")
    for token in (ADMIN_TOKEN, "abcdefghijklmnopqrstuvwxyz", "tok-abcdefghijklmnop"):
        assert token not in str(raised.value)


def test_a_bad_tokens_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"admin {ADMIN_TOKEN}\nsuperuser {WORKER_TOKEN}\n")
    for argv, environ in (
        (["--tokens-file", str(path)], {}),
        ([], {"RUNCONTROL_TOKENS_FILE": str(path)}),
    ):
        with pytest.raises(SystemExit) as exited:
            parse_settings(argv, environ=environ)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"{path}, line 2: unknown role 'superuser'" in err
        assert WORKER_TOKEN not in err and ADMIN_TOKEN not in err
    with pytest.raises(SystemExit):
        parse_settings(["--tokens-file", str(tmp_path / "missing")], environ={})
    assert "cannot read tokens file" in capsys.readouterr().err


def test_every_token_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = parse_tokens("\n".join(f"{role} {token}" for role, token in TOKENS.items()))
    compared: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module tokens.py uses
    for token in (READER_TOKEN, ADMIN_TOKEN, "unknown-token-0123456789"):
        compared.clear()
        credentials.for_token(token)
        assert len(compared) == len(TOKENS)  # no early exit on the first match


# --- roles --------------------------------------------------------------------------------


def test_every_rpc_has_a_deliberate_role() -> None:
    assert set(METHOD_ROLES) == set(SERVICE.methods_by_name)
    assert Role.READER < Role.WORKER < Role.ADMIN
    assert required_role("WaitRun", pb.WaitRunRequest(attach=True)) is Role.ADMIN
    assert required_role("WaitRun", pb.WaitRunRequest()) is Role.READER
    assert required_role("SomeFutureRpc", object()) is Role.ADMIN  # unknown: closed


# One request per RPC that, once allowed, answers without an auth error.
REQUESTS: dict[str, Callable[[], Any]] = {
    "CreateRun": lambda: pb.CreateRunRequest(thread_id="t-roles"),
    "GetRun": lambda: pb.GetRunRequest(run_id=MISSING),
    "ListRuns": lambda: pb.ListRunsRequest(),
    "SetRunStatus": lambda: pb.SetRunStatusRequest(
        run_id=MISSING, status=RunStatus.RUNNING.value, worker_id="w"
    ),
    "CancelRun": lambda: pb.CancelRunRequest(run_id=MISSING),
    "HasInflight": lambda: pb.HasInflightRequest(thread_id="t-roles"),
    "DeleteRun": lambda: pb.DeleteRunRequest(run_id=MISSING),
    "WaitRun": lambda: pb.WaitRunRequest(run_id=MISSING),
    "WatchRuns": lambda: pb.WatchRunsRequest(send_initial=True),
    "RenewRunLease": lambda: pb.RenewRunLeaseRequest(run_id=MISSING, worker_id="w"),
}
CASES = [(name, REQUESTS[name], METHOD_ROLES[name]) for name in REQUESTS] + [
    ("WaitRun", lambda: pb.WaitRunRequest(run_id=MISSING, attach=True), Role.ADMIN)
]


async def _outcome(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
    method: str,
    request: Any,
    metadata: tuple[tuple[str, str], ...],
) -> RunControlError | None:
    """The call's error (None: it succeeded); a stream is judged by its first message."""
    try:
        if method == "WatchRuns":
            call = stub.WatchRuns(request, metadata=metadata, timeout=CALL_TIMEOUT)
            async for _ in call:
                break
            call.cancel()
        else:
            await getattr(stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return from_grpc_error(error)
    return None


@pytest.fixture
async def auth_server(tmp_path: Path) -> AsyncIterator[RunControlServer]:
    async with running(Settings(tokens_file=write_tokens(tmp_path / "tokens"))) as server:
        yield server


@pytest.fixture
async def stub(auth_server: RunControlServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        yield run_control_pb2_grpc.RunControlStub(channel)


@pytest.mark.parametrize(
    ("method", "request_factory", "required"),
    CASES,
    ids=[
        f"{name}{'-attach' if i == len(REQUESTS) else ''}" for i, (name, _, _) in enumerate(CASES)
    ],
)
async def test_each_rpc_needs_its_role(
    stub: Any, method: str, request_factory: Callable[[], Any], required: Role
) -> None:
    label = required.label
    for caller in (None, "wrong-token-0123456789"):
        metadata = _bearer(caller) if caller else ()
        error = await _outcome(stub, method, request_factory(), metadata)
        assert error is not None and error.code is grpc.StatusCode.UNAUTHENTICATED, error
        assert isinstance(error, Unauthenticated)
        assert error.metadata == {"method": method, "required_role": label}
    for role in Role:
        error = await _outcome(stub, method, request_factory(), _bearer(TOKENS[role.label]))
        if role < required:
            assert isinstance(error, PermissionDenied), (role, error)
            assert error.code is grpc.StatusCode.PERMISSION_DENIED
            assert error.metadata == {"method": method, "required_role": label, "role": role.label}
        else:
            assert not isinstance(error, Unauthenticated | PermissionDenied), (role, error)


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer   ", ADMIN_TOKEN])
async def test_a_malformed_authorization_header_is_unauthenticated(stub: Any, value: str) -> None:
    error = await _outcome(stub, "ListRuns", pb.ListRunsRequest(), (("authorization", value),))
    assert isinstance(error, Unauthenticated)
    assert "Bearer <token>" in error.message


async def test_the_scheme_is_case_insensitive(stub: Any) -> None:
    metadata = (("authorization", f"bearer {READER_TOKEN}"),)
    assert await _outcome(stub, "ListRuns", pb.ListRunsRequest(), metadata) is None


async def test_health_and_reflection_stay_open(auth_server: RunControlServer) -> None:
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT,
        )
        names = {
            s.name for r in [m async for m in reflection] for s in r.list_services_response.service
        }
        assert "runcontrol.v1.RunControl" in names


async def test_typed_client_errors_and_attached_waits(auth_server: RunControlServer) -> None:
    address = auth_server.address
    async with (
        AsyncClient(address, token=ADMIN_TOKEN) as admin,
        AsyncClient(address, token=WORKER_TOKEN) as worker,
        AsyncClient(address, token=None) as anonymous,
    ):
        handle = await admin.create_run("t-typed")
        with pytest.raises(Unauthenticated) as missing:
            await anonymous.fetch_run(handle.run_id)
        assert (missing.value.method, missing.value.required_role) == ("GetRun", "reader")
        with pytest.raises(PermissionDenied) as denied:
            await worker.wait_run(handle.run_id, timeout=0.5, attach=True)
        assert (denied.value.required_role, denied.value.role) == ("admin", "worker")
        run, done = await worker.wait_run(handle.run_id, timeout=0.2)  # not attached: allowed
        assert (run.run_id, done) == (handle.run_id, False)
        run, done = await admin.wait_run(handle.run_id, timeout=0.2, attach=True)
        assert (run.status, done) == (RunStatus.PENDING, False)


async def test_authentication_comes_before_draining(auth_server: RunControlServer) -> None:
    await auth_server.begin_drain()
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        stub = run_control_pb2_grpc.RunControlStub(channel)
        anonymous = await _outcome(stub, "ListRuns", pb.ListRunsRequest(), ())
        assert isinstance(anonymous, Unauthenticated)
        known = await _outcome(stub, "ListRuns", pb.ListRunsRequest(), _bearer(READER_TOKEN))
        assert known is not None and known.reason == "SHUTTING_DOWN"


async def test_tokens_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(tokens_file=write_tokens(tmp_path / "tokens"), log_level="DEBUG")
    async with running(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        stub = run_control_pb2_grpc.RunControlStub(channel)
        for token in (*TOKENS.values(), "wrong-token-0123456789"):
            await _outcome(stub, "CreateRun", pb.CreateRunRequest(thread_id="t"), _bearer(token))
        server.reload_tokens()
    assert "refused CreateRun to reader-name (role reader)" in caplog.text  # logs do name
    for token in (*TOKENS.values(), "wrong-token-0123456789"):
        assert token not in caplog.text


# --- client certificates as identities --------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"))


async def test_client_certificates_map_to_roles(certs: CertFiles, tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", "worker cert:worker-1 worker-1-cert")
    settings = Settings(
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca,
        tokens_file=tokens,
    )
    ca = _read(certs.ca)

    def client(name: str, token: str | None = None) -> AsyncClient:
        cert, key = (_read(p) for p in certs.client(name))
        return AsyncClient(
            server.address,
            root_certificates=ca,
            client_certificate=cert,
            client_key=key,
            token=token,
        )

    async with running(settings) as server:
        async with client("worker-1", ADMIN_TOKEN) as admin:
            handle = await admin.create_run("t-mtls")  # the token wins over the certificate
        async with client("worker-1") as worker:
            await worker.set_status(handle.run_id, RunStatus.RUNNING, worker_id="w1")
            with pytest.raises(PermissionDenied) as denied:
                await worker.cancel_run(handle.run_id)
            assert denied.value.role == "worker"
        async with client("nobody") as unlisted:  # signed by the CA, but has no entry
            with pytest.raises(Unauthenticated, match="client certificate 'nobody' has no role"):
                await unlisted.fetch_run(handle.run_id)
        async with client("worker-1", READER_TOKEN) as reader:  # a token is never topped up
            with pytest.raises(PermissionDenied):
                await reader.set_status(handle.run_id, RunStatus.SUCCESS, worker_id="w1")


# --- reloading ----------------------------------------------------------------------------


async def test_reload_applies_a_new_file_and_keeps_the_old_one_when_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    new_token = "fresh-admin-token-0123456789"
    async with running(Settings(tokens_file=write_tokens(path))) as server:
        async with AsyncClient(server.address, token=new_token) as fresh:
            with pytest.raises(Unauthenticated):
                await fresh.has_inflight("t")
            path.write_text(f"admin {new_token} fresh\n")
            assert server.reload_tokens()
            assert not (await fresh.has_inflight("t")).has_inflight
            path.write_text(f"admin {new_token} fresh\nboss {ADMIN_TOKEN}\n")
            assert not server.reload_tokens()
            assert not (await fresh.has_inflight("t")).has_inflight  # the old file holds
        async with AsyncClient(server.address, token=ADMIN_TOKEN) as removed:
            with pytest.raises(Unauthenticated):
                await removed.has_inflight("t")
    assert "line 2: unknown role 'boss'" in caplog.text


async def test_sighup_reloads_the_tokens_file_of_the_real_server(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    old, new = "old-admin-token-0123456789", "new-admin-token-0123456789"
    path.write_text(f"admin {old} old\n")
    async with server_process("--tokens-file", str(path)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)

            async def works(token: str) -> bool:
                error = await _outcome(stub, "ListRuns", pb.ListRunsRequest(), _bearer(token))
                if error is not None and not isinstance(error, Unauthenticated):
                    raise error
                return error is None

            assert await works(old) and not await works(new)
            path.write_text(f"admin {new} new\n")
            server.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: works(new))
            assert not await works(old)
            # A broken file is refused with a message; the server keeps the last good one.
            path.write_text(f"admin {new} new\nsuperuser {old}\n")
            server.proc.send_signal(signal.SIGHUP)
        # Signals are handled in the order sent: the reload is tried before the stop.
        assert await server.stop(signal.SIGTERM) == 0
        stderr = (await asyncio.wait_for(server.stderr, 10)).decode()
    assert "tokens file reloaded: 1 tokens" in stderr
    assert "line 2: unknown role 'superuser'" in stderr
    assert old not in stderr and new not in stderr


def test_settings_are_still_printable_without_secrets(tmp_path: Path) -> None:
    settings = Settings(tokens_file=write_tokens(tmp_path / "tokens"))
    assert ADMIN_TOKEN not in repr(dataclasses.replace(settings))
