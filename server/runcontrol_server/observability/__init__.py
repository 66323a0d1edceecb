"""Metrics, access logs and traces: what the settings turn on, assembled for the app.

Each part is off by default and costs nothing while off (no interceptor, no import):
`--metrics-listen` (Prometheus, `metrics`), `--access-log` (`logs`), `--otel`
(OpenTelemetry, `tracing`). `--log-format` is applied by the app's logging setup
(`logs.formatter`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from ..config import Settings
from ..domain.manager import RunManager
from .interceptor import CallObserver, CallSink
from .logs import AccessLog

if TYPE_CHECKING:
    from .listener import MetricsListener
    from .run_counts import RunCounts
    from .tracing import Tracing

log = logging.getLogger(__name__)

OTEL_EXTRA_HINT = "pip install 'runcontrol[otel]'"


class Observability:
    """The observability parts `settings` ask for, around one server's `manager`.

    `interceptors` go first in the server's list, tracing outermost (so the access log
    can name the call's trace); `start` after the manager started, `stop` after the
    gRPC server stopped.
    """

    def __init__(self, settings: Settings, manager: RunManager) -> None:
        """Raises ImportError (with the install hint) when tracing is asked for but
        the `otel` extra is missing."""
        interceptors: list[grpc.aio.ServerInterceptor] = []
        sinks: list[CallSink] = []
        self._tracing: Tracing | None = None
        self._listener: MetricsListener | None = None
        self._run_counts: RunCounts | None = None
        if settings.otel:
            try:
                from .tracing import Tracing
            except ImportError as error:
                hint = f"--otel needs the otel extra: {OTEL_EXTRA_HINT} ({error})"
                raise ImportError(hint) from error
            self._tracing = Tracing()
            interceptors.append(self._tracing.interceptor)
        if settings.metrics_listen is not None:
            from .listener import MetricsListener
            from .metrics import RpcMetrics, StateCollector, new_registry
            from .run_counts import RunCounts

            registry = new_registry()
            sinks.append(RpcMetrics(registry))
            self._run_counts = RunCounts(manager)
            registry.register(StateCollector(manager, self._run_counts))
            self._listener = MetricsListener(settings.metrics_listen, registry)
        if settings.access_log:
            trace_id: Callable[[], str | None] | None = None
            if self._tracing is not None:
                from .tracing import current_trace_id as trace_id
            sinks.append(AccessLog(trace_id))
        if sinks:
            interceptors.append(CallObserver(tuple(sinks)))
        self.interceptors: tuple[grpc.aio.ServerInterceptor, ...] = tuple(interceptors)

    @property
    def metrics_address(self) -> str | None:
        """The metrics endpoint's bound "HOST:PORT" once started (None: metrics off)."""
        return None if self._listener is None else self._listener.bound

    async def start(self) -> None:
        """Bind the metrics endpoint (OSError when it cannot) and count the runs."""
        if self._listener is None or self._run_counts is None:
            return
        address = self._listener.start()
        try:
            await self._run_counts.start()
        except BaseException:
            await self._listener.stop()
            raise
        log.info("serving metrics on http://%s/metrics", address)

    async def stop(self) -> None:
        """Stop the metrics endpoint and flush traces (idempotent)."""
        run_counts, self._run_counts = self._run_counts, None
        if run_counts is not None:
            await run_counts.stop()
        if self._listener is not None:
            await self._listener.stop()
        tracing, self._tracing = self._tracing, None
        if tracing is not None:
            # An OTLP export may wait for its collector: not on the event loop.
            await asyncio.to_thread(tracing.stop)
