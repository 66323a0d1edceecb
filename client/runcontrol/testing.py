"""Run a real RunControl server inside the current event loop, for tests.

Needs the server: `pip install 'runcontrol[server]'` (the client alone,
`pip install runcontrol`, does not bring the server's dependencies; importing this
module then raises an ImportError that names the command). This is the one module of
the client package that imports the server package: a re-export of
`runcontrol_server.testing`, which lives next to the server internals it assembles.

Example::

    from runcontrol.testing import serve_in_process
    from runcontrol.v1 import run_control_pb2 as pb

    async def test_create() -> None:
        async with serve_in_process() as server:
            response = await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
            assert response.run.thread_id == "t1"

The server listens on 127.0.0.1 on a free port and speaks real gRPC (HTTP/2,
serialization, status trailers), so tests see exactly what remote clients see. In
pytest, the `runcontrol_server` fixture (registered by the package) is a thin wrapper
around `serve_in_process()`.
"""

from __future__ import annotations

from runcontrol_server.testing import InProcessServer, serve_in_process

__all__ = ["InProcessServer", "serve_in_process"]
