"""Python client for the runcontrol service.

* `AsyncClient` / `Client` — the RunControl API with typed values and errors.
* `AsyncRunHandle` / `RunHandle` — one run: refresh, wait, cancel, claim, watch;
  `AsyncRunHandle.claimed(worker_id)` gives a worker a `ClaimedRun` (cancel event).
* `runcontrol.errors` — `RunControlError` and one class per ErrorInfo reason.
* `runcontrol.v1` — the generated protobuf messages and gRPC stubs.
* `runcontrol.testing` — `serve_in_process()`, a real in-process server for tests.
"""

from ._claim import ClaimedRun
from ._client import AsyncClient, Client
from ._handle import AsyncRunHandle, RunHandle
from ._models import CancelAction, DisconnectMode, EventType, MultitaskStrategy, Run, RunStatus
from ._requests import Creation, Inflight, RunPage
from ._watch import Bookmark, Resynced, WatchEvent, WatchItem
from .errors import (
    AlreadyClaimed,
    InvalidArgument,
    InvalidTransition,
    LeaseNotHeld,
    LimitExceeded,
    MalformedRequest,
    PermissionDenied,
    RequestIdReused,
    RevisionCompacted,
    RevisionMismatch,
    RunActive,
    RunControlError,
    RunNotFound,
    ShuttingDown,
    StoreIncompatible,
    StoreUnavailable,
    ThreadBusy,
    Unauthenticated,
)

__all__ = [
    "AlreadyClaimed",
    "AsyncClient",
    "AsyncRunHandle",
    "Bookmark",
    "CancelAction",
    "ClaimedRun",
    "Client",
    "Creation",
    "DisconnectMode",
    "EventType",
    "Inflight",
    "InvalidArgument",
    "InvalidTransition",
    "LeaseNotHeld",
    "LimitExceeded",
    "MalformedRequest",
    "MultitaskStrategy",
    "PermissionDenied",
    "RequestIdReused",
    "Resynced",
    "RevisionCompacted",
    "RevisionMismatch",
    "Run",
    "RunActive",
    "RunControlError",
    "RunHandle",
    "RunNotFound",
    "RunPage",
    "RunStatus",
    "ShuttingDown",
    "StoreIncompatible",
    "StoreUnavailable",
    "ThreadBusy",
    "Unauthenticated",
    "WatchEvent",
    "WatchItem",
]
