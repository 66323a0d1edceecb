"""Python-side values of the contract: enums and an immutable `Run`.

Enum values equal the proto numbers, so converting is `RunStatus(record.status)`; the
`_UNSPECIFIED` zero values are not members because a stored record never carries them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC as _UTC
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format

from .v1 import run_pb2


class RunStatus(enum.IntEnum):
    PENDING = run_pb2.RUN_STATUS_PENDING
    RUNNING = run_pb2.RUN_STATUS_RUNNING
    SUCCESS = run_pb2.RUN_STATUS_SUCCESS
    ERROR = run_pb2.RUN_STATUS_ERROR
    TIMEOUT = run_pb2.RUN_STATUS_TIMEOUT
    INTERRUPTED = run_pb2.RUN_STATUS_INTERRUPTED

    @property
    def is_active(self) -> bool:
        return self in (RunStatus.PENDING, RunStatus.RUNNING)

    @property
    def is_terminal(self) -> bool:
        return not self.is_active


class DisconnectMode(enum.IntEnum):
    CANCEL = run_pb2.DISCONNECT_MODE_CANCEL
    CONTINUE = run_pb2.DISCONNECT_MODE_CONTINUE


class MultitaskStrategy(enum.IntEnum):
    REJECT = run_pb2.MULTITASK_STRATEGY_REJECT
    INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
    ROLLBACK = run_pb2.MULTITASK_STRATEGY_ROLLBACK
    ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE


class CancelAction(enum.IntEnum):
    INTERRUPT = run_pb2.CANCEL_ACTION_INTERRUPT
    ROLLBACK = run_pb2.CANCEL_ACTION_ROLLBACK


class EventType(enum.IntEnum):
    ADDED = run_pb2.EVENT_TYPE_ADDED
    MODIFIED = run_pb2.EVENT_TYPE_MODIFIED
    DELETED = run_pb2.EVENT_TYPE_DELETED


def _utc(record: Any, field: str) -> datetime | None:
    if not record.HasField(field):
        return None
    value: datetime = getattr(record, field).ToDatetime(tzinfo=_UTC)
    return value


def _optional(record: Any, field: str) -> str | None:
    return getattr(record, field) if record.HasField(field) else None


def _payload(text: str, struct: Any) -> dict[str, Any]:
    """A payload from its JSON text (exact integers), else from its Struct: a server
    that does not know the text form, or a call without the JSON header, sends that."""
    if text:
        value: dict[str, Any] = json.loads(text)
        return value
    return json_format.MessageToDict(struct)


@dataclass(frozen=True, slots=True)
class Run:
    """One run as the server stored it at `mod_revision` (a snapshot; never changes)."""

    run_id: str
    thread_id: str
    assistant_id: str | None
    status: RunStatus
    on_disconnect: DisconnectMode
    multitask_strategy: MultitaskStrategy
    metadata: dict[str, Any]
    kwargs: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    error: str | None
    cancel_action: CancelAction
    cancel_reason: str | None
    worker_id: str | None
    deadline: datetime | None
    create_revision: int
    mod_revision: int
    request_id: str | None
    # Claims so far, claims allowed in all, and the claimer's lease (None: no lease).
    attempt: int = 0
    max_attempts: int = 1
    lease_ttl: timedelta | None = None

    @property
    def is_active(self) -> bool:
        return self.status.is_active

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @classmethod
    def from_proto(cls, record: run_pb2.RunRecord) -> Run:
        created_at = _utc(record, "created_at")
        updated_at = _utc(record, "updated_at")
        if created_at is None or updated_at is None:
            raise ValueError("RunRecord without created_at/updated_at")
        return cls(
            run_id=record.run_id,
            thread_id=record.thread_id,
            assistant_id=_optional(record, "assistant_id"),
            status=RunStatus(record.status),
            on_disconnect=DisconnectMode(record.on_disconnect),
            multitask_strategy=MultitaskStrategy(record.multitask_strategy),
            metadata=_payload(record.metadata_json, record.metadata),
            kwargs=_payload(record.kwargs_json, record.kwargs),
            created_at=created_at,
            updated_at=updated_at,
            error=_optional(record, "error"),
            cancel_action=CancelAction(record.cancel_action),
            cancel_reason=_optional(record, "cancel_reason"),
            worker_id=_optional(record, "worker_id"),
            deadline=_utc(record, "deadline"),
            create_revision=record.create_revision,
            mod_revision=record.mod_revision,
            request_id=_optional(record, "request_id"),
            attempt=record.attempt,
            # 0 only from a server that predates the field: one claim, as it allowed.
            max_attempts=record.max_attempts or 1,
            lease_ttl=record.lease_ttl.ToTimedelta() if record.HasField("lease_ttl") else None,
        )
