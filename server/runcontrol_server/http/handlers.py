"""The gRPC method handlers as registered, and the chain grpc.aio runs to pick one.

Why: an HTTP call must behave exactly like the gRPC call of the same method, and what
a gRPC call runs is not the servicer method alone but the handler registered for it
(`wire.add_to_server`: pass-through encoding, MALFORMED_REQUEST, the error table)
wrapped by each server interceptor in turn (metrics and access log, tracing,
authentication, drain). `MethodTable` stands in for the server in `add_to_server`,
registering every handler with grpc and keeping it; `InterceptedMethods` runs the
server's interceptors over it for one call, as grpc.aio does before each call, and
returns the handler grpc would have run.

Stdlib and grpc only: the app imports this module whether HTTP is on or off.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import grpc

# Generic only in the type stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Metadatum(NamedTuple):
    """One metadata entry as grpc hands it over: a (key, value) pair that also has
    `.key` and `.value` (OpenTelemetry's interceptor reads those)."""

    key: str
    value: str


Metadata: TypeAlias = tuple[Metadatum, ...]


class MethodTable:
    """Stands in for a grpc.aio server in generated-style `add_*_to_server` functions:
    registers with the server and keeps each registered handler by its full method
    name ("/runcontrol.v1.RunControl/GetRun")."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self._handlers: dict[str, Handler] = {}

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        self._handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


class CallDetails(NamedTuple):
    """What interceptors are told about a call (`grpc.HandlerCallDetails`)."""

    method: str
    invocation_metadata: Metadata


_Continuation: TypeAlias = "Callable[[CallDetails], Awaitable[Handler | None]]"


class InterceptedMethods:
    """The handler each call runs: `table`'s, through `interceptors` (the server's
    list, first outermost, as given to `grpc.aio.server`)."""

    def __init__(
        self, table: MethodTable, interceptors: Sequence[grpc.aio.ServerInterceptor]
    ) -> None:
        self._table = table
        chain: _Continuation = self._registered
        for interceptor in reversed(interceptors):
            chain = functools.partial(interceptor.intercept_service, chain)  # type: ignore[arg-type]
        self._chain = chain

    async def _registered(self, details: CallDetails) -> Handler | None:
        return self._table.handlers.get(details.method)

    async def handler(self, method: str, metadata: Metadata) -> Handler:
        """The handler for one call of `method` with request `metadata`."""
        handler = await self._chain(CallDetails(method, metadata))
        if handler is None:  # the endpoints come from the same service: a bug
            raise LookupError(f"no handler registered for {method}")
        return handler
