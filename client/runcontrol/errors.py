"""Typed errors for RunControl clients.

The service answers every failure with a `google.rpc.Status` whose details hold a
`google.rpc.ErrorInfo` (domain "runcontrol"). `from_grpc_error` decodes it, so
callers branch on `reason` and read facts from `metadata` instead of parsing text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "runcontrol"
# Trailer that carries the serialized google.rpc.Status (gRPC convention).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class RunControlError(Exception):
    """A RunControl call failed.

    `reason` is the ErrorInfo reason (e.g. "THREAD_BUSY"), or "" when the server sent
    no ErrorInfo (transport failures, INTERNAL, UNIMPLEMENTED).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


def _details_status(trailing: Iterable[Any] | None) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer must not hide the original error
                return None
    return None


def from_grpc_error(err: grpc.RpcError) -> RunControlError:
    """Decode a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    # AioRpcError is not a grpc.Call, but both expose the same three accessors.
    if isinstance(err, grpc.aio.AioRpcError | grpc.Call):
        code, message, trailing = err.code(), err.details() or "", err.trailing_metadata()
    else:  # an RpcError that is not a call carries no status at all
        return RunControlError(grpc.StatusCode.UNKNOWN, str(err))
    status = _details_status(trailing)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return RunControlError(
                    code, message, reason=info.reason, metadata=dict(info.metadata)
                )
    return RunControlError(code, message)
