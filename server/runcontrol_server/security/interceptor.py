"""The grpc.aio interceptor that authenticates and authorizes every RunControl call.

One mechanism for every method: `intercept_service` reads the method and the
`authorization` header before any handler runs, and wraps the method's handler in a
guard. Once gRPC has decoded the request, the guard works out the role the call
needs (`roles.required_role`: an attached WaitRun needs more than a plain one), who
the caller is (bearer token, else the client certificate under mutual TLS), and
answers UNAUTHENTICATED or PERMISSION_DENIED through the servicer's error table
before the real handler runs. Health and reflection are other services: untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ..domain.errors import PermissionDenied, Unauthenticated
from ..servicer.errors import mapped_errors
from .roles import Role, required_role
from .tls import peer_certificate_names
from .tokens import Credentials, Identity

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
_SCHEME = "bearer"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Check = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Presented:
    """What the call's `authorization` header held (never logged: it is a secret)."""

    token: str | None = None
    malformed: bool = False


def presented_credential(metadata: Sequence[tuple[str, Any]] | None) -> Presented:
    """The bearer token of `authorization: Bearer <token>` (scheme case-insensitive)."""
    for key, value in metadata or ():
        if key != AUTHORIZATION:
            continue
        scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            return Presented(malformed=True)
        return Presented(token)
    return Presented()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Guards every method of `service` with the roles of `credentials()`, read per
    call so a reloaded tokens file applies to the next call."""

    def __init__(self, service: str, credentials: Callable[[], Credentials]) -> None:
        self._prefix = f"/{service}/"
        self._credentials = credentials

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # None: an unknown method, answered UNIMPLEMENTED as usual.
        if handler is None or not method.startswith(self._prefix):
            return handler
        rpc = method[len(self._prefix) :]
        presented = presented_credential(handler_call_details.invocation_metadata)
        authorize = self._authorize

        async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async with mapped_errors(context):
                authorize(rpc, request, presented, context)

        return guarded(handler, check)

    def _authorize(self, rpc: str, request: Any, presented: Presented, context: Any) -> None:
        required = required_role(rpc, request)
        identity = self._identify(rpc, required, presented, context)
        if identity.role < required:
            log.debug("refused %s to %s (role %s)", rpc, identity.name, identity.role.label)
            raise PermissionDenied(rpc, required.label, identity.role.label)

    def _identify(self, rpc: str, required: Role, presented: Presented, context: Any) -> Identity:
        """The caller's identity: its token's, else its client certificate's."""

        def refuse(detail: str) -> Unauthenticated:
            log.debug("refused %s: %s", rpc, detail)
            return Unauthenticated(rpc, required.label, detail)

        if presented.malformed:
            raise refuse("the authorization metadata must be 'Bearer <token>'")
        credentials = self._credentials()
        if presented.token is not None:
            identity = credentials.for_token(presented.token)
            if identity is None:
                raise refuse("the bearer token is not valid")
            return identity
        names = peer_certificate_names(context)
        if not names:
            raise refuse("no bearer token (send metadata 'authorization: Bearer <token>')")
        identity = credentials.for_certificate(names)
        if identity is None:
            raise refuse(f"no bearer token, and client certificate {names[0]!r} has no role")
        return identity


def guarded(
    handler: grpc.RpcMethodHandler[_Req, _Resp], check: _Check
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """`handler` with `check(request, context)` run before its behaviour, same codec.

    A stream behaviour keeps its kind: grpc.aio serves a coroutine function through
    `context.write` and an async generator by iterating it.
    """
    codec: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_behaviour: Any = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            await check(request, context)
            return await unary_behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **codec)
    behaviour: Any = handler.unary_stream
    if behaviour is None:  # RunControl has no client-streaming methods
        raise TypeError("only unary-request methods can be guarded")
    if inspect.isasyncgenfunction(behaviour):

        async def generator(request: Any, context: Any) -> Any:
            await check(request, context)
            async for response in behaviour(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(generator, **codec)

    async def writer(request: Any, context: Any) -> None:
        await check(request, context)
        await behaviour(request, context)

    return grpc.unary_stream_rpc_method_handler(writer, **codec)
