"""Domain <-> proto conversion. No validation here: requests are checked first.

Enum maps are built by *name* (`RUN_STATUS_` + domain name), so a renamed or
missing proto value fails at import time instead of mapping silently to 0.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from runcontrol.v1 import run_pb2

from ..domain.model import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus

STATUS_TO_PROTO: dict[RunStatus, run_pb2.RunStatus.ValueType] = {
    m: run_pb2.RunStatus.Value("RUN_STATUS_" + m.name) for m in RunStatus
}
DISCONNECT_TO_PROTO: dict[DisconnectMode, run_pb2.DisconnectMode.ValueType] = {
    m: run_pb2.DisconnectMode.Value("DISCONNECT_MODE_" + m.name) for m in DisconnectMode
}
STRATEGY_TO_PROTO: dict[MultitaskStrategy, run_pb2.MultitaskStrategy.ValueType] = {
    m: run_pb2.MultitaskStrategy.Value("MULTITASK_STRATEGY_" + m.name) for m in MultitaskStrategy
}
CANCEL_ACTION_TO_PROTO: dict[CancelAction, run_pb2.CancelAction.ValueType] = {
    m: run_pb2.CancelAction.Value("CANCEL_ACTION_" + m.name) for m in CancelAction
}

STATUS_FROM_PROTO: dict[int, RunStatus] = {v: k for k, v in STATUS_TO_PROTO.items()}
DISCONNECT_FROM_PROTO: dict[int, DisconnectMode] = {v: k for k, v in DISCONNECT_TO_PROTO.items()}
STRATEGY_FROM_PROTO: dict[int, MultitaskStrategy] = {v: k for k, v in STRATEGY_TO_PROTO.items()}
CANCEL_ACTION_FROM_PROTO: dict[int, CancelAction] = {
    v: k for k, v in CANCEL_ACTION_TO_PROTO.items()
}


def status_name(value: str) -> str:
    """Proto name (`RUN_STATUS_RUNNING`) of a domain status value (`"running"`).

    Domain errors carry statuses as plain strings; an unknown one is passed through
    rather than failing the error path itself.
    """
    try:
        return str(run_pb2.RunStatus.Name(STATUS_TO_PROTO[RunStatus(value)]))
    except (ValueError, KeyError):
        return value


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A JSON object from a Struct. Raises ValueError for NaN/Infinity numbers.

    The same values as `json_format.MessageToDict(struct)` (numbers stay floats, an
    unset Value is null), without its per-field descriptor lookups.
    """
    fields = struct.fields
    if not fields:
        return {}
    return {key: _value_to_json(fields[key]) for key in fields}


def _value_to_json(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            name = "NaN" if math.isnan(number) else "Infinity"
            # json_format's wording: such a number has no JSON form.
            raise ValueError(
                f"Fail to serialize {name} for Value.number_value, "
                "which would parse as string_value"
            )
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_json(item) for item in value.list_value.values]
    return None  # null_value, or no kind set


def dict_to_struct(value: dict[str, Any], target: Struct) -> None:
    target.update(value)


def to_timestamp(value: datetime, target: Timestamp) -> None:
    target.FromDatetime(value)


def run_to_proto(run: Run, target: run_pb2.RunRecord | None = None) -> run_pb2.RunRecord:
    """The wire record of a run. Equal runs always give byte-equal records."""
    record = target if target is not None else run_pb2.RunRecord()
    record.run_id = run.run_id
    record.thread_id = run.thread_id
    record.status = STATUS_TO_PROTO[run.status]
    record.on_disconnect = DISCONNECT_TO_PROTO[run.on_disconnect]
    record.multitask_strategy = STRATEGY_TO_PROTO[run.multitask_strategy]
    dict_to_struct(run.metadata, record.metadata)
    dict_to_struct(run.kwargs, record.kwargs)
    to_timestamp(run.created_at, record.created_at)
    to_timestamp(run.updated_at, record.updated_at)
    record.cancel_action = CANCEL_ACTION_TO_PROTO[run.cancel_action]
    record.create_revision = run.create_revision
    record.mod_revision = run.mod_revision
    # proto3 `optional`: presence matters to clients, so set only what exists.
    if run.assistant_id is not None:
        record.assistant_id = run.assistant_id
    if run.error is not None:
        record.error = run.error
    if run.cancel_reason is not None:
        record.cancel_reason = run.cancel_reason
    if run.worker_id is not None:
        record.worker_id = run.worker_id
    if run.request_id is not None:
        record.request_id = run.request_id
    if run.deadline is not None:
        to_timestamp(run.deadline, record.deadline)
    return record
