"""THE ONE TABLE from domain errors to gRPC statuses, and the helper every RPC uses.

Each domain error class maps to a status code, a `google.rpc.ErrorInfo` reason
(domain "runcontrol") and the ErrorInfo metadata built from the exception's
facts. Handlers never build statuses themselves: they run inside
`mapped_errors(context)`, which answers domain errors from this table and any
other exception as a bare INTERNAL (logged with its traceback, no internals sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain import errors as de
from .convert import STATUS_NAMES

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "runcontrol"
INTERNAL_MESSAGE = "internal error"

_E = TypeVar("_E", bound=de.RunControlError)


# No slots: instantiating a subscripted generic sets __orig_class__ on the instance.
@dataclass(frozen=True)
class ErrorMapping(Generic[_E]):
    code: grpc.StatusCode
    reason: str
    metadata: Callable[[_E], dict[str, str]]


def _ids(ids: tuple[str, ...]) -> str:
    return ",".join(ids)


def _invalid_transition(e: de.InvalidTransition) -> dict[str, str]:
    meta = {
        "run_id": e.run_id,
        "from_status": STATUS_NAMES[e.from_status],
        "to_status": STATUS_NAMES[e.to_status],
    }
    if e.queued_behind:
        meta["queued_behind"] = _ids(e.queued_behind)
    return meta


def _already_claimed(e: de.AlreadyClaimed) -> dict[str, str]:
    meta = {"run_id": e.run_id}
    if e.worker_id is not None:
        meta["worker_id"] = e.worker_id
    return meta


def _lease_not_held(e: de.LeaseNotHeld) -> dict[str, str]:
    meta = {"run_id": e.run_id, "status": STATUS_NAMES[e.status]}
    if e.worker_id is not None:
        meta["worker_id"] = e.worker_id
    return meta


def _limit_exceeded(e: de.LimitExceeded) -> dict[str, str]:
    return {"limit": e.limit} if e.field is None else {"limit": e.limit, "field": e.field}


_FPC = grpc.StatusCode.FAILED_PRECONDITION

# Looked up along the MRO, so a future subclass of a domain error inherits its row.
ERROR_TABLE: dict[type[de.RunControlError], ErrorMapping[Any]] = {
    de.InvalidArgument: ErrorMapping[de.InvalidArgument](
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda e: {"field": e.field}
    ),
    de.RunNotFound: ErrorMapping[de.RunNotFound](
        grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND", lambda e: {"run_id": e.run_id}
    ),
    de.ThreadBusy: ErrorMapping[de.ThreadBusy](
        _FPC,
        "THREAD_BUSY",
        lambda e: {"thread_id": e.thread_id, "inflight_run_ids": _ids(e.inflight_run_ids)},
    ),
    de.InvalidTransition: ErrorMapping[de.InvalidTransition](
        _FPC, "INVALID_TRANSITION", _invalid_transition
    ),
    de.AlreadyClaimed: ErrorMapping[de.AlreadyClaimed](_FPC, "ALREADY_CLAIMED", _already_claimed),
    de.LeaseNotHeld: ErrorMapping[de.LeaseNotHeld](_FPC, "LEASE_NOT_HELD", _lease_not_held),
    de.RunActive: ErrorMapping[de.RunActive](
        _FPC, "RUN_ACTIVE", lambda e: {"run_id": e.run_id, "status": STATUS_NAMES[e.status]}
    ),
    de.RequestIdReused: ErrorMapping[de.RequestIdReused](
        _FPC, "REQUEST_ID_REUSED", lambda e: {"request_id": e.request_id, "run_id": e.run_id}
    ),
    de.RevisionMismatch: ErrorMapping[de.RevisionMismatch](
        grpc.StatusCode.ABORTED,
        "REVISION_MISMATCH",
        lambda e: {
            "run_id": e.run_id,
            "expected_mod_revision": str(e.expected),
            "mod_revision": str(e.actual),
        },
    ),
    de.RevisionCompacted: ErrorMapping[de.RevisionCompacted](
        grpc.StatusCode.OUT_OF_RANGE,
        "REVISION_COMPACTED",
        lambda e: {"compact_revision": str(e.compact_revision)},
    ),
    de.LimitExceeded: ErrorMapping[de.LimitExceeded](
        grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", _limit_exceeded
    ),
    de.MalformedRequest: ErrorMapping[de.MalformedRequest](
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        lambda e: {"message_type": e.message_type},
    ),
    de.StoreUnavailable: ErrorMapping[de.StoreUnavailable](
        grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", lambda e: {}
    ),
    de.StoreIncompatible: ErrorMapping[de.StoreIncompatible](
        _FPC, "STORE_INCOMPATIBLE", lambda e: {}
    ),
    de.ShuttingDown: ErrorMapping[de.ShuttingDown](
        grpc.StatusCode.UNAVAILABLE,
        "SHUTTING_DOWN",
        lambda e: {"revision": str(e.revision), "resume_revision": str(e.revision + 1)},
    ),
    de.Unauthenticated: ErrorMapping[de.Unauthenticated](
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        lambda e: {"method": e.method, "required_role": e.required_role},
    ),
    de.PermissionDenied: ErrorMapping[de.PermissionDenied](
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        lambda e: {"method": e.method, "required_role": e.required_role, "role": e.role},
    ),
}


def _mapping_for(error: de.RunControlError) -> ErrorMapping[Any] | None:
    for cls in type(error).__mro__:
        mapping = ERROR_TABLE.get(cls)
        if mapping is not None:
            return mapping
    return None


def rich_status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> Any:
    """A grpc.Status carrying google.rpc.Status + ErrorInfo (for `abort_with_status`)."""
    info = error_details_pb2.ErrorInfo(domain=ERROR_DOMAIN, reason=reason, metadata=metadata)
    detail = AnyMessage()
    detail.Pack(info)
    # grpc.StatusCode values are (int code, name) pairs.
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(status)


def status_for(error: de.RunControlError) -> Any | None:
    """The grpc.Status for a domain error, or None when the table has no row for it."""
    mapping = _mapping_for(error)
    if mapping is None:
        return None
    return rich_status(mapping.code, str(error), mapping.reason, mapping.metadata(error))


def to_grpc_status(error: de.RunControlError) -> Any:
    """The grpc.Status for any domain error (bare INTERNAL if the table lacks its class).

    For callers outside a handler body, e.g. an interceptor refusing calls while draining.
    """
    status = status_for(error)
    if status is None:
        logger.error("domain error without a status mapping: %r", error)
        return _internal_status()
    return status


def _internal_status() -> Any:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE))


@asynccontextmanager
async def mapped_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Run a handler body, answering every exception it raises as a gRPC status.

    `context.abort*` itself raises (grpc.aio.AbortError, an Exception subclass), and
    cancellation raises CancelledError: both pass through untouched so the call ends
    the way grpc already decided.
    """
    try:
        yield
    except (grpc.aio.AbortError, asyncio.CancelledError):
        raise
    except de.RunControlError as error:
        await context.abort_with_status(to_grpc_status(error))
    except Exception:
        logger.exception("unexpected error in RPC handler")
        await context.abort_with_status(_internal_status())


async def answer_error(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    """Answer `error` as `mapped_errors` does, then re-raise: for a failure already caught
    (the one wrapper every RunControl handler runs in, `malformed.refusing_malformed`,
    enters the error path only on failure, so successful calls pay nothing for it)."""
    async with mapped_errors(context):
        raise error
    raise AssertionError("unreachable: mapped_errors aborts or re-raises")  # pragma: no cover
