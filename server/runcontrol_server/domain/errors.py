"""Domain errors. Plain exceptions that carry the facts a caller needs to react.

The servicer maps each class to a gRPC status and an ErrorInfo reason in one table
(`runcontrol_server.servicer.errors`); nothing here knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence


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
        from_status: str,
        to_status: str,
        *,
        queued_behind: Sequence[str] = (),
        detail: str = "",
    ) -> None:
        text = f"run {run_id!r} cannot move from {from_status} to {to_status}"
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


class RunActive(RunControlError):
    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id!r} is still active ({status}); cancel it first")
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
    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


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
