"""Domain errors. Plain exceptions that carry the facts a caller needs to react.

The servicer maps each class to a gRPC status and an ErrorInfo reason in one table
(`runcontrol_server.servicer.errors`); nothing here knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import RunStatus


class RunControlError(Exception):
    """Base of every error the service answers on purpose."""


class InvalidArgument(RunControlError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RunNotFound(RunControlError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class ThreadBusy(RunControlError):
    def __init__(self, thread_id: str, inflight_run_ids: Sequence[str]) -> None:
        super().__init__(f"thread {thread_id!r} has active runs: {', '.join(inflight_run_ids)}")
        self.thread_id = thread_id
        self.inflight_run_ids = tuple(inflight_run_ids)


class InvalidTransition(RunControlError):
    def __init__(
        self,
        run_id: str,
        from_status: RunStatus,
        to_status: RunStatus,
        *,
        queued_behind: Sequence[str] = (),
        detail: str = "",
    ) -> None:
        text = f"run {run_id!r} cannot move from {from_status.value} to {to_status.value}"
        if queued_behind:
            text += f": queued behind active runs {', '.join(queued_behind)}"
        elif detail:
            text += f": {detail}"
        super().__init__(text)
        self.run_id = run_id
        self.from_status = from_status
        self.to_status = to_status
        self.queued_behind = tuple(queued_behind)


class AlreadyClaimed(RunControlError):
    def __init__(self, run_id: str, worker_id: str | None) -> None:
        owner = repr(worker_id) if worker_id is not None else "a worker without id"
        super().__init__(f"run {run_id!r} is claimed by {owner}")
        self.run_id = run_id
        self.worker_id = worker_id


class LeaseNotHeld(RunControlError):
    """A lease renewal for a run that is not RUNNING under this worker with a lease: it
    finished, was cancelled, or its lease lapsed (and maybe another worker claimed it).
    The worker should stop."""

    def __init__(self, run_id: str, status: RunStatus, worker_id: str | None) -> None:
        holder = f"worker {worker_id!r}" if worker_id is not None else "no worker"
        super().__init__(
            f"run {run_id!r} holds no lease for this worker "
            f"(status {status.value}, held by {holder})"
        )
        self.run_id = run_id
        self.status = status
        self.worker_id = worker_id


class RunActive(RunControlError):
    def __init__(self, run_id: str, status: RunStatus) -> None:
        super().__init__(f"run {run_id!r} is still active ({status.value}); cancel it first")
        self.run_id = run_id
        self.status = status


class RequestIdReused(RunControlError):
    def __init__(self, request_id: str, run_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for a different request (run {run_id!r})"
        )
        self.request_id = request_id
        self.run_id = run_id


class RevisionMismatch(RunControlError):
    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(f"run {run_id!r} is at mod_revision {actual}, not the expected {expected}")
        self.run_id = run_id
        self.expected = expected
        self.actual = actual


class RevisionCompacted(RunControlError):
    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} is no longer kept; the oldest available is "
            f"{compact_revision + 1} (re-list and watch from the list's revision)"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class LimitExceeded(RunControlError):
    """A configured bound was reached. `limit` names it as its setting does (e.g.
    "max_stored_runs"); `field` is the request field that went past it, when one did."""

    def __init__(self, limit: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.field = field


class MalformedRequest(RunControlError):
    """The request's bytes do not parse as the message the method takes (random bytes,
    a truncated message, a wrong wire type, invalid UTF-8 in a string)."""

    def __init__(self, message_type: str) -> None:
        super().__init__(f"the request does not parse as {message_type or 'the request message'}")
        self.message_type = message_type


class ShuttingDown(RunControlError):
    def __init__(self, revision: int) -> None:
        super().__init__(f"server is shutting down; resume from revision {revision + 1}")
        self.revision = revision


class StoreUnavailable(RunControlError):
    """The store (e.g. its database) cannot answer now; the call may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class StoreIncompatible(RunControlError):
    """The store holds data this version cannot use (e.g. a newer schema)."""


class Unauthenticated(RunControlError):
    """The call carried no credential the server accepts. `detail` says what was wrong
    (no token, a malformed header, an unknown token) and never holds the token."""

    def __init__(self, method: str, required_role: str, detail: str) -> None:
        super().__init__(f"{method} needs a credential with role {required_role}: {detail}")
        self.method = method
        self.required_role = required_role


class PermissionDenied(RunControlError):
    """The caller is known but its role is below the one the call needs."""

    def __init__(self, method: str, required_role: str, role: str) -> None:
        super().__init__(f"{method} needs role {required_role}; the caller has role {role}")
        self.method = method
        self.required_role = required_role
        self.role = role
