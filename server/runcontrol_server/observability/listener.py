"""The metrics endpoint: prometheus_client's WSGI app on a small HTTP server thread.

Why a thread and not the event loop: a scrape renders every series, which would
stall calls for its duration on the loop; on its own thread it only shares the GIL.
Any path answers the metrics (as prometheus_client's own server does), in the text
format or OpenMetrics as the scraper asks.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ..config import split_host_port

# How often the serving thread checks for `stop`: bounds how long stopping takes.
_POLL_INTERVAL = 0.1


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape on stderr."""


class MetricsListener:
    """Serves `registry` on `address` ("HOST:PORT"; IPv6 hosts in brackets)."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        self._address = address
        self._registry = registry
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.bound: str | None = None  # "HOST:PORT" once started (the real port for 0)

    def start(self) -> str:
        """Bind (OSError when the address is taken or not local) and serve."""
        host, port = split_host_port(self._address)
        bare_host = host.strip("[]")
        family = socket.getaddrinfo(bare_host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
        server: ThreadingWSGIServer = make_server(
            bare_host,
            port,
            make_wsgi_app(self._registry),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="runcontrol-metrics",
            daemon=True,
        )
        self._thread.start()
        self.bound = f"{host}:{server.server_address[1]}"
        return self.bound

    async def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() blocks until the serving loop notices: not on the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
