"""Build and run the gRPC server: RunControl, health, reflection and graceful drain.

Shutdown order (SIGTERM/SIGINT or `RunControlServer.stop`):
1. drain: health turns NOT_SERVING for every service and new RunControl calls are
   refused with UNAVAILABLE / SHUTTING_DOWN, so balancers and clients move away;
2. `grpc.aio.Server.stop(grace)`, and the HTTP listener's stop alongside: in-flight
   calls get up to `grace` seconds to finish, then are cancelled;
3. the metrics endpoint stops and traces are flushed (observability);
4. the manager (and its store) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from runcontrol.v1 import run_control_pb2

from .config import (
    EMBEDDED_SCHEME,
    Settings,
    limits_of,
    log_level_number,
    max_message_bytes_of,
    retention_of,
    split_host_port,
    store_limits_of,
)
from .domain.manager import RunManager
from .domain.store import RunStore
from .http.handlers import InterceptedMethods, MethodTable
from .observability import Observability
from .observability.logs import formatter as log_formatter
from .security.server import ServerSecurity
from .servicer import DrainGate, Limits, RunControlServicer, add_to_server
from .servicer.malformed import TolerantRegistrar
from .stores.memory import InMemoryRunStore

if TYPE_CHECKING:
    from .http.listener import HttpListener

log = logging.getLogger(__name__)


class ListenError(OSError):
    """The configured address could not be bound."""


class ConfigurationError(RuntimeError):
    """The settings ask for something this installation cannot do."""


RUN_CONTROL_SERVICE = run_control_pb2.DESCRIPTOR.services_by_name["RunControl"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def configure_logging(settings: Settings) -> None:
    """Log to stderr: stdout carries only the `listening on` line for supervisors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(settings.log_format))  # text or JSON lines
    logging.basicConfig(level=log_level_number(settings), handlers=[handler])


def build_store(settings: Settings) -> RunStore:
    """The configured store: in memory, or PostgreSQL (opened by `RunManager.start`)."""
    history_max_age = (
        timedelta(seconds=settings.history_max_age) if settings.history_max_age else None
    )
    if settings.store == "memory":
        return InMemoryRunStore(
            history_limit=settings.history_size,
            history_max_age=history_max_age,
            limits=store_limits_of(settings),
        )
    try:
        from .stores.postgres import EmbeddedPostgresRunStore, PostgresRunStore
    except ImportError as error:  # the optional driver is missing
        raise ConfigurationError(
            "a PostgreSQL store needs the PostgreSQL driver: "
            f"pip install 'runcontrol[postgres]' ({error})"
        ) from error
    if settings.store.startswith(EMBEDDED_SCHEME):
        return EmbeddedPostgresRunStore(
            settings.store[len(EMBEDDED_SCHEME) :],
            pool_size=settings.pool_size,
            history_limit=settings.history_size,
            history_max_age=history_max_age,
            limits=store_limits_of(settings),
        )
    return PostgresRunStore(
        settings.store,
        pool_size=settings.pool_size,
        history_limit=settings.history_size,
        history_max_age=history_max_age,
        limits=store_limits_of(settings),
    )


def build_manager(settings: Settings, store: RunStore | None = None) -> RunManager:
    """The manager over `store` (default: the configured store)."""
    if store is None:
        store = build_store(settings)
    return RunManager(
        store,
        retention=retention_of(settings),
        max_watchers=settings.max_watchers,
        max_waiters=settings.max_waiters,
        progress_interval=settings.progress_interval,
        history_size=settings.history_size,
    )


# Clients may ping this often without data (the Python and Node clients ping every
# 30 s or less often); more often than this earns a GOAWAY "too_many_pings".
_MIN_CLIENT_PING_INTERVAL_MS = 10_000


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC channel arguments for keepalive and connection age (see `Settings`)."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    options = [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.keepalive_time:
        options += [
            ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        ]
    if settings.max_connection_age:
        options.append(("grpc.max_connection_age_ms", ms(settings.max_connection_age)))
        if settings.max_connection_age_grace:
            options.append(
                ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace))
            )
    return options


class _WatchContext:
    """A Health.Watch context that notices when NOT_SERVING has been sent while draining."""

    def __init__(self, context: Any, health: _DrainingHealth) -> None:
        self._context = context
        self._health = health
        self.finished = asyncio.Event()

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        if self._health.draining and message.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            self.finished.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _DrainingHealth(health_aio.HealthServicer):  # type: ignore[misc]  # untyped base
    """grpc.health.v1 whose Watch streams end once they have reported NOT_SERVING.

    The stock servicer keeps Watch streams open forever, so every load balancer
    watching health would hold a draining server for its whole grace period.
    """

    def __init__(self) -> None:
        super().__init__()
        self.draining = False

    async def drain(self) -> None:
        self.draining = True
        await self.enter_graceful_shutdown()  # permanent NOT_SERVING, watchers notified

    async def List(self, request: Any, context: Any) -> health_pb2.HealthListResponse:
        # The stock aio servicer lacks List: its inherited stub raised, so every call
        # was logged with a traceback. The statuses are the base class's own table.
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        proxy = _WatchContext(context, self)
        watch = asyncio.ensure_future(super().Watch(request, proxy))
        finished = asyncio.ensure_future(proxy.finished.wait())
        try:
            await asyncio.wait({watch, finished}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                watch.result()
        finally:
            for task in (watch, finished):
                task.cancel()
            await asyncio.gather(watch, finished, return_exceptions=True)


HTTP_EXTRA_HINT = "pip install 'runcontrol[http]'"


def _http_listener(settings: Settings, methods: InterceptedMethods) -> HttpListener:
    """The HTTP listener (`--http-listen`); its packages are the `http` extra's, imported
    only when it is asked for."""
    try:
        from .http.listener import HttpListener
    except ImportError as error:
        raise ConfigurationError(
            f"--http-listen needs the http extra: {HTTP_EXTRA_HINT} ({error})"
        ) from error
    return HttpListener(settings, methods)


class RunControlServer:
    """One gRPC server process-part: RunControl + health + reflection on one address.

    The server owns `manager` (built from `settings` when not given) and closes it
    on `stop`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        manager: RunManager | None = None,
        limits: Limits | None = None,
        page_token_key: bytes | None = None,
    ) -> None:
        """`limits` and `page_token_key` override what `settings` derive (for tests)."""
        self._settings = settings
        self._manager = manager if manager is not None else build_manager(settings)
        self._health = _DrainingHealth()
        self._drain = DrainGate(self._manager.revision)
        try:
            self._security = ServerSecurity(settings, RUN_CONTROL_SERVICE)
        except ValueError as error:  # a TLS or tokens file went bad since parsing
            raise ConfigurationError(str(error)) from None
        try:
            self._observability = Observability(settings, self._manager)
        except ImportError as error:  # --otel without the otel extra
            raise ConfigurationError(str(error)) from None
        if page_token_key is None and settings.page_token_key is not None:
            page_token_key = settings.page_token_key.encode()
        self._servicer = RunControlServicer(
            self._manager,
            limits=limits or limits_of(settings),
            page_token_key=page_token_key,
        )
        # Observability outermost, so refused calls are counted, logged and traced; the
        # drain gate is checked inside, by the handlers' own wrapper (servicer/drain.py).
        interceptors = [*self._observability.interceptors, *self._security.interceptors]
        self._server = grpc.aio.server(
            interceptors=interceptors,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                # Without this, Linux gRPC binds with SO_REUSEPORT and a second server
                # on the same port would silently share it instead of failing.
                ("grpc.so_reuseport", 0),
                # Bigger requests are refused by gRPC itself (RESOURCE_EXHAUSTED).
                ("grpc.max_receive_message_length", max_message_bytes_of(settings)),
                *connection_options(settings),
            ],
        )
        # Not the generated add_RunControlServicer_to_server: answers are pre-encoded bytes.
        # The table keeps the handlers, so HTTP calls run the very same ones.
        methods = MethodTable(self._server)
        add_to_server(self._servicer, cast(grpc.aio.Server, methods), gate=self._drain)
        self._http = (
            _http_listener(settings, InterceptedMethods(methods, interceptors))
            if settings.http_listen is not None
            else None
        )
        # Health and reflection too answer bytes that do not parse (MALFORMED_REQUEST).
        registrar = TolerantRegistrar(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registrar)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (RUN_CONTROL_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
            ),
            registrar,
        )
        self._address: str | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def manager(self) -> RunManager:
        return self._manager

    @property
    def address(self) -> str:
        """The bound "HOST:PORT" (the real port when `listen` asked for port 0)."""
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    @property
    def metrics_address(self) -> str | None:
        """The metrics endpoint's bound "HOST:PORT" once started (None: metrics off)."""
        return self._observability.metrics_address

    @property
    def http_address(self) -> str | None:
        """The HTTP listener's bound "HOST:PORT" once started (None: HTTP off)."""
        return None if self._http is None else self._http.address

    @property
    def draining(self) -> bool:
        return self._drain.closed

    async def start(self) -> str:
        """Bind `settings.listen`, start serving, and return the bound "HOST:PORT"."""
        host, _ = split_host_port(self._settings.listen)
        try:
            port = self._security.add_port(self._server)  # TLS when configured
        except RuntimeError as exc:  # grpc raises a bare RuntimeError on bind failure
            raise ListenError(f"cannot listen on {self._settings.listen}: {exc}") from exc
        for service in ("", RUN_CONTROL_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self._manager.start()  # the feed reader and the janitor
        try:
            await self._observability.start()  # the metrics endpoint, when asked for
        except OSError as exc:
            where = self._settings.metrics_listen
            raise ListenError(f"cannot serve metrics on {where}: {exc}") from exc
        await self._start_http()
        await self._server.start()
        self._address = f"{host}:{port}"
        log.info("serving %s on %s", RUN_CONTROL_SERVICE, self._address)
        if self._http is not None:
            where = f"{self._http.scheme}://{self._http.address}"
            log.info("serving %s over Connect and gRPC-Web on %s", RUN_CONTROL_SERVICE, where)
        self._security.log_exposure()
        return self._address

    async def _start_http(self) -> None:
        if self._http is None:
            return
        try:
            await self._http.start()
        except OSError as exc:
            await self._observability.stop()
            raise ListenError(f"cannot serve HTTP on {self._settings.http_listen}: {exc}") from exc

    def reload_tokens(self) -> bool:
        """Re-read `--tokens-file` (SIGHUP); a bad file keeps the previous entries."""
        return self._security.reload()

    async def begin_drain(self) -> None:
        """Report NOT_SERVING and refuse new RunControl calls; in-flight ones continue."""
        if self._drain.closed:
            return
        self._drain.close()
        # Permanent: later `set` calls are ignored, so nothing flips it back to SERVING.
        await self._health.drain()
        # Streams and waits would otherwise hold the grace period open and then be
        # cut off without a word: end them now, each told where to resume.
        await self._manager.begin_shutdown()
        log.info("draining: new calls are refused with SHUTTING_DOWN")

    async def stop(self, grace: float | None = None) -> None:
        """Drain, give in-flight calls `grace` seconds (default: the setting), close.

        Safe to call more than once and concurrently; every caller waits for the end.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self._settings.grace_period if grace is None else grace
        await self.begin_drain()
        if self._http is None:
            await self._server.stop(grace)
        else:  # both listeners give their calls the same grace period
            await asyncio.gather(self._server.stop(grace), self._http.stop(grace))
        await self._observability.stop()
        await self._manager.close()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully.

    Prints `listening on HOST:PORT` as the first line of stdout once the port is bound,
    so a supervisor or test can start with port 0 and learn the real port.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s, stopping (grace %.1fs)", signum.name, settings.grace_period)
        stop_requested.set()

    # Handlers go in before the port is bound, so a signal sent as soon as the
    # `listening on` line appears is never lost to the default action.
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)

    def restore_signals() -> None:
        # Default handling again: a second Ctrl-C or SIGTERM during the grace period
        # ends the process at once instead of being swallowed.
        for signum in signals:
            loop.remove_signal_handler(signum)

    server = RunControlServer(settings)
    if settings.tokens_file is not None:  # without one, SIGHUP keeps its usual meaning
        loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    try:
        address = await server.start()
    except BaseException:
        restore_signals()
        await server.manager.close()
        raise
    try:
        print(f"listening on {address}", flush=True)
        await stop_requested.wait()
    finally:
        restore_signals()
        await server.stop()
