"""Rows and JSON records <-> `Run`: the one place that knows the column layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ...domain.model import (
    CancelAction,
    Change,
    ChangeKind,
    CreateOutcome,
    DisconnectMode,
    MultitaskStrategy,
    Run,
    RunStatus,
)

# The columns of rc_runs in `Run`'s field order: `SELECT {RUN_COLUMNS}` rows map 1:1.
RUN_COLUMNS = ", ".join(Run._fields)
ACTIVE_SQL = "('pending', 'running')"


def utc(value: datetime) -> datetime:
    """The same instant in `datetime.UTC` (what every record holds)."""
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def lease_ttl_micros(value: timedelta | None) -> int | None:
    """The `lease_ttl` column (microseconds: exact, and plain in `to_jsonb`)."""
    return None if value is None else value // timedelta(microseconds=1)


def _lease_ttl(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(microseconds=value)


def run_from_row(row: Sequence[Any], offset: int = 0) -> Run:
    """A `Run` from `row[offset:offset + len(Run._fields)]`, selected as `RUN_COLUMNS`."""
    r = row[offset : offset + len(Run._fields)]
    return Run(
        r[0],
        r[1],
        r[2],
        RunStatus(r[3]),
        DisconnectMode(r[4]),
        MultitaskStrategy(r[5]),
        r[6],
        r[7],
        utc(r[8]),
        utc(r[9]),
        int(r[10]),
        int(r[11]),
        r[12],
        CancelAction(r[13]),
        r[14],
        r[15],
        _utc_or_none(r[16]),
        r[17],
        int(r[18]),
        int(r[19]),
        _lease_ttl(r[20]),
    )


def _time(value: str | None) -> datetime | None:
    return None if value is None else utc(datetime.fromisoformat(value))


def run_from_record(record: Mapping[str, Any]) -> Run:
    """A `Run` from `to_jsonb(rc_runs row)` (the change feed and idempotency answers)."""
    created_at = _time(record["created_at"])
    updated_at = _time(record["updated_at"])
    assert created_at is not None and updated_at is not None
    return Run(
        record["run_id"],
        record["thread_id"],
        record["assistant_id"],
        RunStatus(record["status"]),
        DisconnectMode(record["on_disconnect"]),
        MultitaskStrategy(record["multitask_strategy"]),
        record["metadata_json"],
        record["kwargs_json"],
        created_at,
        updated_at,
        int(record["create_revision"]),
        int(record["mod_revision"]),
        record["error"],
        CancelAction(record["cancel_action"]),
        record["cancel_reason"],
        record["worker_id"],
        _time(record["deadline"]),
        record["request_id"],
        # Records written before schema 3 have no lease fields: their defaults.
        int(record.get("attempt", 0)),
        int(record.get("max_attempts", 1)),
        _lease_ttl(record.get("lease_ttl")),
    )


def change_from_row(kind: str, prev_status: str | None, record: Mapping[str, Any]) -> Change:
    return Change(
        ChangeKind(kind),
        run_from_record(record),
        None if prev_status is None else RunStatus(prev_status),
    )


def outcome_from_json(outcome: Mapping[str, Any]) -> CreateOutcome:
    """The first answer to a request_id, as stored with it, marked as a replay."""
    return CreateOutcome(
        run_from_record(outcome["run"]),
        tuple(run_from_record(r) for r in outcome["interrupted"]),
        tuple(outcome["queued_behind"]),
        replayed=True,
    )
