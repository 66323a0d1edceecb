"""Run a real RunControl server inside the current event loop, for tests.

Public as `runcontrol.testing` (a re-export: user code and the `runcontrol_server`
pytest fixture import it from there). It lives here, next to the server internals it
assembles, so the client package imports one module of the server and nothing else.
Needs the `server` extra; without it importing this module raises
`runcontrol_server.dependencies.ServerExtraMissing` (an ImportError) naming
`pip install 'runcontrol[server]'`.

Example::

    from runcontrol.testing import serve_in_process
    from runcontrol.v1 import run_control_pb2 as pb

    async def test_create() -> None:
        async with serve_in_process() as server:
            response = await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
            assert response.run.thread_id == "t1"

The server listens on 127.0.0.1 on a free port and speaks real gRPC (HTTP/2,
serialization, status trailers), so tests see exactly what remote clients see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from runcontrol.v1 import run_control_pb2_grpc

from .dependencies import server_extra_required

with server_extra_required("runcontrol.testing (a real in-process server)"):
    from .app import RunControlServer, build_manager
    from .config import Settings
    from .domain import RunManager, RunStore
    from .servicer import Limits

__all__ = ["InProcessServer", "serve_in_process"]


@dataclass(frozen=True)
class InProcessServer:
    """A running in-process server and a client connected to it."""

    address: str
    channel: grpc.aio.Channel
    stub: run_control_pb2_grpc.RunControlAsyncStub
    manager: RunManager
    server: RunControlServer


@asynccontextmanager
async def serve_in_process(
    *,
    store: RunStore | None = None,
    limits: Limits | None = None,
    page_token_key: bytes | None = None,
    manager: RunManager | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[InProcessServer]:
    """Serve RunControl on `127.0.0.1:<free port>` until the block exits.

    The same server `runcontrol-server` runs (health, reflection, draining included).
    `manager` wins over `store`; otherwise a manager is built from `settings` (retention,
    watch limits) over `store`, by default a fresh in-memory store. `settings`
    defaults to `Settings()` with `listen` forced to 127.0.0.1:0. On exit the channel
    is closed and the server stopped at once (no grace).
    """
    settings = dataclasses.replace(settings or Settings(), listen="127.0.0.1:0")
    if manager is None:
        manager = build_manager(settings, store)
    server = RunControlServer(
        settings, manager=manager, limits=limits, page_token_key=page_token_key
    )
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            yield InProcessServer(address, channel, stub, manager, server)
    finally:
        await server.stop(grace=0)
