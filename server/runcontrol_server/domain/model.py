"""The run record and the values that describe it.

Records are frozen snapshots: every change makes a new record, so a reader can
never see (or cause) a half-applied change. JSON payloads are held as canonical
JSON text and decoded into a fresh object on every read, so no reader ever holds
a reference to stored internals.

The records made on every write (`Run`, `RunDraft`, `Change`, `ChangeSet`,
`CreateOutcome`) are `NamedTuple`s: as immutable as a frozen dataclass, but built
about three times faster (a frozen dataclass sets each field through
`object.__setattr__`), which is measurable on the CreateRun path. The rest stay
frozen dataclasses.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self not in ACTIVE_STATUSES


ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


class DisconnectMode(enum.StrEnum):
    CANCEL = "cancel"
    CONTINUE = "continue"


class MultitaskStrategy(enum.StrEnum):
    REJECT = "reject"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"
    ENQUEUE = "enqueue"


class CancelAction(enum.StrEnum):
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class ChangeKind(enum.StrEnum):
    """What happened to a run in the store (watchers turn it into ADDED/MODIFIED/DELETED)."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


# One encoder for every call: `json.dumps` with options builds a new one each time.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# ... and `JSONEncoder.encode` still builds its C encoder (`c_make_encoder`) on every
# call: built here once, with exactly the arguments `JSONEncoder.iterencode` passes it
# for `_CANONICAL`, and its circular-reference markers emptied after a failed call (a
# successful one leaves them empty). None where the C accelerator is missing.
_MARKERS: dict[int, Any] = {}
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # untyped in typeshed
_C_CANONICAL: Any = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        _MARKERS,
        _CANONICAL.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",  # key separator
        ",",  # item separator
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
)
# A JSON string's text (ensure_ascii=False, as `_CANONICAL` writes strings).
_json_string = json.encoder.encode_basestring


def _encode_c(value: dict[str, Any]) -> str:
    # What `_CANONICAL.encode(value)` does for any object but a str, minus the build.
    try:
        return "".join(_C_CANONICAL(value, 0))
    except BaseException:
        _MARKERS.clear()  # a failed call can leave the containers it was inside
        raise


_encode: Callable[[dict[str, Any]], str] = (
    _encode_c if _C_CANONICAL is not None else _CANONICAL.encode
)


def canonical_json(value: dict[str, Any] | None) -> str:
    """The one textual form of a JSON object: equal objects give equal text."""
    if not value:
        return "{}"  # the common empty payload, without a trip through the encoder
    return _encode(value)


_MICROSECOND = timedelta(microseconds=1)


class Run(NamedTuple):
    """One run at one revision. Never mutated: changes produce a new `Run`."""

    run_id: str
    thread_id: str
    assistant_id: str | None
    status: RunStatus
    on_disconnect: DisconnectMode
    multitask_strategy: MultitaskStrategy
    metadata_json: str
    kwargs_json: str
    created_at: datetime
    updated_at: datetime
    create_revision: int
    mod_revision: int
    error: str | None = None
    cancel_action: CancelAction = CancelAction.INTERRUPT
    cancel_reason: str | None = None
    worker_id: str | None = None
    deadline: datetime | None = None
    request_id: str | None = None
    # Claims so far, claims allowed in all, and the lease the claimer holds (set only
    # while RUNNING under a claim that asked for one; see `janitor` for lapses).
    attempt: int = 0
    max_attempts: int = 1
    lease_ttl: timedelta | None = None

    @property
    def is_active(self) -> bool:
        return self.status.is_active

    @property
    def metadata(self) -> dict[str, Any]:
        """A fresh copy of the metadata object."""
        result: dict[str, Any] = json.loads(self.metadata_json)
        return result

    @property
    def kwargs(self) -> dict[str, Any]:
        """A fresh copy of the kwargs object."""
        result: dict[str, Any] = json.loads(self.kwargs_json)
        return result


class RunDraft(NamedTuple):
    """Everything a caller decides about a new run; the store adds ids of time and revision."""

    run_id: str
    thread_id: str
    assistant_id: str | None = None
    on_disconnect: DisconnectMode = DisconnectMode.CANCEL
    multitask_strategy: MultitaskStrategy = MultitaskStrategy.REJECT
    metadata_json: str = "{}"
    kwargs_json: str = "{}"
    request_id: str | None = None
    timeout: timedelta | None = None
    max_attempts: int = 1

    def fingerprint(self) -> str:
        """Identity of the *request* (not of the run): what request_id retries must repeat.

        The canonical JSON of {thread_id, assistant_id, on_disconnect,
        multitask_strategy, metadata, kwargs, timeout_us[, max_attempts]}, written
        directly: keys in sorted order, and the payloads as their canonical text,
        which re-encoding the decoded payload would give back unchanged (canonical
        text is a fixed point). Every client sending request ids pays this per create.
        """
        # max_attempts only when asked for: fingerprints stored before it existed still match.
        assistant = "null" if self.assistant_id is None else _json_string(self.assistant_id)
        attempts = "" if self.max_attempts == 1 else f',"max_attempts":{int(self.max_attempts)}'
        timeout = "null" if self.timeout is None else str(self.timeout // _MICROSECOND)
        return (
            f'{{"assistant_id":{assistant},"kwargs":{self.kwargs_json}{attempts},'
            f'"metadata":{self.metadata_json},'
            f'"multitask_strategy":{_json_string(self.multitask_strategy.value)},'
            f'"on_disconnect":{_json_string(self.on_disconnect.value)},'
            f'"thread_id":{_json_string(self.thread_id)},"timeout_us":{timeout}}}'
        )


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A worker's request to move a run to `status`."""

    run_id: str
    status: RunStatus
    error: str | None = None
    worker_id: str | None = None
    expected_mod_revision: int | None = None
    # With a claim: the lease the claimer takes (None: no lease).
    lease_ttl: timedelta | None = None


class Change(NamedTuple):
    """One run's change within a revision."""

    kind: ChangeKind
    run: Run
    prev_status: RunStatus | None


class ChangeSet(NamedTuple):
    """Everything that happened at one store revision (one atomic operation)."""

    revision: int
    changes: tuple[Change, ...]


class FeedBounds(NamedTuple):
    """The revisions a store's change feed can serve: `compact_revision + 1` to `head_revision`."""

    compact_revision: int  # every revision <= this one is no longer kept
    head_revision: int  # the newest committed revision (0 before the first change)


class CreateOutcome(NamedTuple):
    run: Run
    interrupted: tuple[Run, ...] = ()
    queued_behind: tuple[str, ...] = ()
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class TransitionOutcome:
    run: Run
    changed: bool


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    run: Run
    cancelled: bool


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    run: Run
    revision: int


@dataclass(frozen=True, slots=True)
class Inflight:
    """The thread's active runs; truthy exactly when there is one."""

    thread_id: str
    run_ids: tuple[str, ...]
    revision: int

    def __bool__(self) -> bool:
        return bool(self.run_ids)


@dataclass(frozen=True, slots=True, order=True)
class ListCursor:
    """Position after the last run of a page, in the list order (created_at, create_revision)."""

    created_at: datetime
    create_revision: int


@dataclass(frozen=True, slots=True)
class ListQuery:
    thread_id: str | None = None
    statuses: frozenset[RunStatus] = field(default_factory=frozenset)
    limit: int = 50
    after: ListCursor | None = None

    def matches(self, run: Run) -> bool:
        return (self.thread_id is None or run.thread_id == self.thread_id) and (
            not self.statuses or run.status in self.statuses
        )


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: tuple[Run, ...]
    next_cursor: ListCursor | None
    revision: int


def cursor_of(run: Run) -> ListCursor:
    return ListCursor(run.created_at, run.create_revision)
