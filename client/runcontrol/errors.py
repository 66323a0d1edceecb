"""Typed errors for RunControl clients, rebuilt from `google.rpc.ErrorInfo`.

The service answers every failure with a `google.rpc.Status` whose details hold a
`google.rpc.ErrorInfo` (domain "runcontrol"). `from_grpc_error` decodes it and picks
the class registered for its `reason` in ONE table (`_BY_REASON`, filled by
`__init_subclass__` as in python-api-core), so callers can write
`except ThreadBusy as busy: busy.inflight_run_ids` instead of parsing text. Reasons
are the key, not status codes: THREAD_BUSY and INVALID_TRANSITION share
FAILED_PRECONDITION yet are different situations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "runcontrol"
# Trailer that carries the serialized google.rpc.Status (gRPC convention).
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_BY_REASON: dict[str, type[RunControlError]] = {}


class RunControlError(Exception):
    """A RunControl call failed.

    `reason` is the ErrorInfo reason (e.g. "THREAD_BUSY"), or "" when the server sent
    no ErrorInfo (transport failures, INTERNAL, UNIMPLEMENTED). `metadata` holds the
    ErrorInfo metadata as sent.
    """

    reason_key: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.reason_key:
            _BY_REASON[cls.reason_key] = cls

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

    def _int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    def _ids(self, key: str) -> tuple[str, ...]:
        value = self.metadata.get(key, "")
        return tuple(part for part in value.split(",") if part)


class InvalidArgument(RunControlError):
    reason_key = "INVALID_ARGUMENT"

    @property
    def field(self) -> str | None:
        return self.metadata.get("field")


class RunNotFound(RunControlError):
    reason_key = "RUN_NOT_FOUND"

    @property
    def run_id(self) -> str | None:
        return self.metadata.get("run_id")


class ThreadBusy(RunControlError):
    reason_key = "THREAD_BUSY"

    @property
    def thread_id(self) -> str | None:
        return self.metadata.get("thread_id")

    @property
    def inflight_run_ids(self) -> tuple[str, ...]:
        return self._ids("inflight_run_ids")


class InvalidTransition(RunControlError):
    reason_key = "INVALID_TRANSITION"

    @property
    def from_status(self) -> str | None:
        return self.metadata.get("from_status")

    @property
    def to_status(self) -> str | None:
        return self.metadata.get("to_status")

    @property
    def queued_behind(self) -> tuple[str, ...]:
        """For a claim refused by ENQUEUE ordering: the runs still ahead of this one."""
        return self._ids("queued_behind")


class AlreadyClaimed(RunControlError):
    reason_key = "ALREADY_CLAIMED"

    @property
    def worker_id(self) -> str | None:
        return self.metadata.get("worker_id")


class LeaseNotHeld(RunControlError):
    """A lease renewal for a run this worker no longer holds (it finished, was
    cancelled, or the lease lapsed): the worker should stop working on it."""

    reason_key = "LEASE_NOT_HELD"

    @property
    def status(self) -> str | None:
        """The run's status (`RUN_STATUS_...`) when the renewal was refused."""
        return self.metadata.get("status")

    @property
    def worker_id(self) -> str | None:
        """The worker holding the run now, if any."""
        return self.metadata.get("worker_id")


class RunActive(RunControlError):
    reason_key = "RUN_ACTIVE"


class RequestIdReused(RunControlError):
    reason_key = "REQUEST_ID_REUSED"

    @property
    def request_id(self) -> str | None:
        return self.metadata.get("request_id")


class RevisionMismatch(RunControlError):
    reason_key = "REVISION_MISMATCH"

    @property
    def mod_revision(self) -> int | None:
        return self._int("mod_revision")


class RevisionCompacted(RunControlError):
    reason_key = "REVISION_COMPACTED"

    @property
    def compact_revision(self) -> int | None:
        return self._int("compact_revision")


class LimitExceeded(RunControlError):
    reason_key = "LIMIT_EXCEEDED"

    @property
    def limit(self) -> str | None:
        """The server setting that was reached, e.g. "max_stored_runs"."""
        return self.metadata.get("limit")

    @property
    def field(self) -> str | None:
        """The request field past the limit, when one was (e.g. "kwargs")."""
        return self.metadata.get("field")


class MalformedRequest(RunControlError):
    """The request's bytes did not parse as the method's message (a client bug, or
    not a RunControl client at all)."""

    reason_key = "MALFORMED_REQUEST"

    @property
    def message_type(self) -> str | None:
        return self.metadata.get("message_type")


class ShuttingDown(RunControlError):
    reason_key = "SHUTTING_DOWN"

    @property
    def resume_revision(self) -> int | None:
        """The `start_revision` to watch from after reconnecting elsewhere."""
        return self._int("resume_revision")


class StoreUnavailable(RunControlError):
    """The server's store (its database) could not answer: retry, here or elsewhere."""

    reason_key = "STORE_UNAVAILABLE"


class StoreIncompatible(RunControlError):
    """The server's store holds data this server version cannot use."""

    reason_key = "STORE_INCOMPATIBLE"


class AccessRefused(RunControlError):
    """Base of the two refusals of the server's authentication: the `method` called and
    the `required_role` it needs."""

    @property
    def method(self) -> str | None:
        return self.metadata.get("method")

    @property
    def required_role(self) -> str | None:
        return self.metadata.get("required_role")


class Unauthenticated(AccessRefused):
    """The call carried no credential the server accepts (no token, or an unknown one)."""

    reason_key = "UNAUTHENTICATED"


class PermissionDenied(AccessRefused):
    """The credential is known but its `role` is below the `required_role`."""

    reason_key = "PERMISSION_DENIED"

    @property
    def role(self) -> str | None:
        """The caller's own role."""
        return self.metadata.get("role")


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
                cls = _BY_REASON.get(info.reason, RunControlError)
                return cls(code, message, reason=info.reason, metadata=dict(info.metadata))
    return RunControlError(code, message)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise gRPC failures as typed `RunControlError`s (one seam, as httpx does)."""
    try:
        yield
    except grpc.RpcError as rpc_error:
        raise from_grpc_error(rpc_error) from rpc_error
