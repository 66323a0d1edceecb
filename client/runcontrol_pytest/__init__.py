"""pytest plugin: the `runcontrol_server` fixture, a real RunControl server per test.

Installed with the package (entry point ``pytest11`` / ``runcontrol``), so any project
that has ``runcontrol`` and ``pytest-asyncio`` installed can ask for it::

    import pytest

    from runcontrol import AsyncClient
    from runcontrol.testing import InProcessServer


    @pytest.mark.asyncio  # not needed with asyncio_mode = "auto"
    async def test_create(runcontrol_server: InProcessServer) -> None:
        async with AsyncClient(runcontrol_server.address) as client:
            handle = await client.create_run("t1")
            assert handle.run.thread_id == "t1"

The fixture is an async fixture, so it needs pytest-asyncio (any mode), and it serves
the real server, so it needs the `server` extra (``pip install 'runcontrol[server]'``).
Without either the plugin still loads (nothing else in a project breaks); only asking
for the fixture fails, with a message naming what to install. The plugin is its own
top-level package so that loading it imports neither `runcontrol` nor grpc: a project's
conftest.py may still configure grpc (GRPC_VERBOSITY, fork support) before anything
imports it. The server is imported on first use only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from runcontrol.testing import InProcessServer

__all__ = ["runcontrol_server"]

_NEEDS_ASYNCIO = (
    "the runcontrol_server fixture is async and needs pytest-asyncio: "
    "pip install pytest-asyncio (then mark tests @pytest.mark.asyncio, "
    'or set asyncio_mode = "auto")'
)


async def _serve() -> AsyncIterator[InProcessServer]:
    """A real RunControl server on 127.0.0.1:<free port> (in-memory store).

    Yields `runcontrol.testing.InProcessServer`: `address` for your own clients, `stub`
    (a connected grpc.aio stub), `channel`, `manager`. A fresh server (and store) per
    test, stopped when the test ends. It runs in the event loop of pytest-asyncio's
    fixture loop scope (`asyncio_default_fixture_loop_scope`, "function" unless
    configured), which must be the test's loop.
    """
    try:
        from runcontrol.testing import serve_in_process  # the server, on first use only
    except ImportError as missing:  # no `server` extra: the message names the command
        pytest.fail(f"the runcontrol_server fixture: {missing}", pytrace=False)

    async with serve_in_process() as server:
        yield server


def _unavailable() -> None:
    """Unavailable: pytest-asyncio is not installed."""
    pytest.fail(_NEEDS_ASYNCIO, pytrace=False)


runcontrol_server: Any
try:
    import pytest_asyncio
except ImportError:  # a project without pytest-asyncio: everything else still works
    runcontrol_server = pytest.fixture(_unavailable, name="runcontrol_server")
else:
    runcontrol_server = pytest_asyncio.fixture(_serve, name="runcontrol_server")
