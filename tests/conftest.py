"""Shared fixtures: a real in-process gRPC server and helpers to read its errors."""

from __future__ import annotations

import os

# gRPC C-core logs routine events (GOAWAY on shutdown) at INFO to stderr; keep test
# output for real failures. Must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from _postgres import pg_server, pg_url  # noqa: F401  (fixtures)

from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2_grpc


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    async with serve_in_process() as running:
        yield running


@pytest.fixture
def stub(server: InProcessServer) -> run_control_pb2_grpc.RunControlAsyncStub:
    return server.stub


ExpectError = Callable[..., Awaitable[RunControlError]]


async def rpc_error(call: Awaitable[Any]) -> RunControlError:
    """Await a call that must fail and return its decoded error (ErrorInfo included)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_grpc_error(raised.value)


async def _expect_error(
    call: Awaitable[Any],
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str] | None = None,
) -> RunControlError:
    """Assert a call fails with `code` / ErrorInfo `reason` (and exactly `metadata` if given)."""
    error = await rpc_error(call)
    assert error.code == code, error
    assert error.reason == reason, error
    if metadata is not None:
        assert error.metadata == metadata, error
    return error


@pytest.fixture(name="expect_error")
def expect_error_fixture() -> ExpectError:
    """`await expect_error(stub.X(request), code, reason, metadata=None)`."""
    return _expect_error
