"""The HTTP listener: RunControl's ASGI application under uvicorn, in the event loop
the gRPC server runs in, started and stopped with it.

Why uvicorn: the Connect protocol and gRPC-Web need nothing beyond HTTP/1.1 (gRPC-Web
carries its trailers in the body), which uvicorn serves from one small embedding API;
gRPC proper, which needs HTTP/2 trailers, keeps its own port. Used here as a part of
the server, not as a program: the socket is bound here (a taken address is an
OSError for the app to report, never uvicorn's `sys.exit`), its signal handling and
logging setup are left out (the app owns both), the client address is the socket's
(no proxy headers: per-peer limits count real peers), and the access log is the
server's own (`--access-log`, which sees HTTP calls like gRPC ones).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.lifespan.off import LifespanOff

from ..config import Settings, max_message_bytes_of, split_host_port
from .endpoints import RunControlApplication, RunControlEndpoints
from .handlers import InterceptedMethods
from .hosts import HostCheck, allowed_hosts
from .web import Cors, WebView

_LEAST_GRACE = 0.001


def _tls_options(settings: Settings) -> dict[str, Any]:
    """The gRPC port's TLS for the HTTP listener too (a client CA: mutual TLS)."""
    if settings.tls_cert is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    if settings.tls_client_ca is not None:
        options.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on "HOST:PORT" (IPv6 in brackets); OSError if taken."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family)


class HttpListener:
    """Serves `methods` (the gRPC server's handlers through its interceptors) over
    Connect and gRPC-Web on `settings.http_listen`."""

    def __init__(self, settings: Settings, methods: InterceptedMethods) -> None:
        if settings.http_listen is None:
            raise ValueError("no --http-listen address")
        self._listen = settings.http_listen
        endpoints = RunControlEndpoints(methods, max_concurrent_calls=settings.max_concurrent_rpcs)
        rpc = RunControlApplication(endpoints, read_max_bytes=max_message_bytes_of(settings))
        # The web view's files at "/", the calls at "/runcontrol.v1.RunControl/...",
        # CORS around both for the origins --http-cors-origin names, and outermost the
        # Host check (a loopback listener answers loopback names: no DNS rebinding).
        app: Any = WebView(rpc)
        if settings.http_cors_origin:
            app = Cors(app, settings.http_cors_origin)
        hosts = allowed_hosts(split_host_port(self._listen)[0], settings.http_allowed_host)
        if hosts is not None:
            app = HostCheck(app, hosts)
        self._config = uvicorn.Config(
            app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            **_tls_options(settings),
        )
        self._server = uvicorn.Server(self._config)
        self._sockets: list[socket.socket] = []
        self._ticker: asyncio.Task[None] | None = None
        self.address: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._config.ssl_certfile else "http"

    async def start(self) -> str:
        """Bind and serve; returns the bound "HOST:PORT". OSError when it cannot bind."""
        sock = bind(self._listen)
        try:
            self._config.load()
            # What uvicorn's own `serve` sets up before `startup` (lifespan is off:
            # the application needs no start-up of its own).
            self._server.lifespan = LifespanOff(self._config)
            await self._server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._sockets = [sock]
        # uvicorn's tick: the Date header once a second, and the exit flag.
        self._ticker = asyncio.create_task(self._server.main_loop())
        host, _ = split_host_port(self._listen)
        self.address = f"{host}:{sock.getsockname()[1]}"
        return self.address

    async def stop(self, grace: float) -> None:
        """Stop accepting, let calls in flight end for up to `grace` seconds, then
        cancel them. Idempotent."""
        ticker, self._ticker = self._ticker, None
        if ticker is None:
            return
        self._server.should_exit = True
        await ticker
        # uvicorn hands it to asyncio.wait_for (seconds: a float is fine), whose timeout
        # 0 gives up before looking: with a millisecond, nothing in flight is no error.
        self._config.timeout_graceful_shutdown = max(grace, _LEAST_GRACE)  # type: ignore[assignment]
        await self._server.shutdown(sockets=self._sockets)
