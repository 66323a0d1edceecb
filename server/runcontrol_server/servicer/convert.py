"""Domain <-> proto conversion. No validation here: requests are checked first.

Enum maps are built by *name* (`RUN_STATUS_` + domain name), so a renamed or
missing proto value fails at import time instead of mapping silently to 0.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.struct_pb2 import Struct, Value

from runcontrol.v1 import run_pb2

from ..domain.model import CancelAction, DisconnectMode, MultitaskStrategy, RunStatus

# The canonical text of the empty payload: not sent in JSON-format records.
EMPTY_JSON = "{}"

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


# Proto names of the domain statuses (`RUN_STATUS_RUNNING`), for ErrorInfo metadata.
STATUS_NAMES: dict[RunStatus, str] = {
    m: run_pb2.RunStatus.Name(v) for m, v in STATUS_TO_PROTO.items()
}
# Every integer up to this magnitude is exactly a double: beyond it a Struct number
# is not known to be the integer the sender meant.
_MAX_EXACT_INT = 2**53


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A JSON object from a Struct. Raises ValueError for NaN/Infinity numbers.

    The same values as `json_format.MessageToDict(struct)` (an unset Value is null),
    without its per-field descriptor lookups, except that an integral number within
    +-2**53 becomes an int: a Struct cannot tell 100 from 100.0 and nearly every sender
    means 100, so JSON-format readers see 100. -0.0 stays a float (its sign is data).
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
        if (
            number.is_integer()
            and -_MAX_EXACT_INT <= number <= _MAX_EXACT_INT
            and (number or math.copysign(1.0, number) > 0)
        ):
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_json(item) for item in value.list_value.values]
    return None  # null_value, or no kind set
