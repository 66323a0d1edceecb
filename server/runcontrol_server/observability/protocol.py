"""Which protocol a call came in on: `grpc` on the gRPC port, or what the HTTP
listener's servicer context says (its `protocol` attribute: `connect`, `grpc-web`).
Shared by the metrics' `protocol` label and the access log's `protocol` field."""

from __future__ import annotations

from typing import Any

GRPC = "grpc"


class ProtocolOf:
    """`context` -> its protocol; whether a context type names one is looked up once
    per type (a gRPC context has no such attribute, and asking costs an exception)."""

    __slots__ = ("_named",)

    def __init__(self) -> None:
        self._named: dict[type, bool] = {}

    def __call__(self, context: Any) -> str:
        kind = type(context)
        named = self._named.get(kind)
        if named is None:
            named = self._named[kind] = isinstance(getattr(context, "protocol", None), str)
        return str(context.protocol) if named else GRPC
