"""Request validation: pure checks that raise `InvalidArgument(field, message)` (or
`LimitExceeded` for a payload past `max_payload_bytes`).

Everything malformed is refused here, before the manager is called, so the domain
only ever sees well-formed values and a refused request changes nothing. The
`field` named in the error is the request field's proto name (for repeated fields
the field itself, e.g. `statuses`), which is what clients branch on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from runcontrol.v1 import run_control_pb2 as pb

from ..domain.errors import InvalidArgument, LimitExceeded
from ..domain.model import RunStatus, canonical_json
from ..domain.watch import MAX_PROGRESS_INTERVAL, MIN_PROGRESS_INTERVAL
from .convert import (
    CANCEL_ACTION_FROM_PROTO,
    DISCONNECT_FROM_PROTO,
    STATUS_FROM_PROTO,
    STATUS_TO_PROTO,
    STRATEGY_FROM_PROTO,
    struct_to_dict,
)
from .limits import Limits

_UNSPECIFIED = 0
# google.protobuf.Duration's own range (about 10,000 years).
_MAX_DURATION_SECONDS = 315_576_000_000
_MIN_PROGRESS_INTERVAL = timedelta(seconds=MIN_PROGRESS_INTERVAL)
_MAX_PROGRESS_INTERVAL = timedelta(seconds=MAX_PROGRESS_INTERVAL)


def check_id(field: str, value: str, limits: Limits) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limits.max_id_length:
        raise InvalidArgument(field, f"must be at most {limits.max_id_length} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "must contain printable characters only")


def check_text(field: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_text_length:
        raise InvalidArgument(field, f"must be at most {limits.max_text_length} characters")


def check_enum(field: str, value: int, known: Mapping[int, object], *, required: bool) -> None:
    """`value` must be a known proto enum number; UNSPECIFIED only when optional.

    proto3 enums are open: a client can send any int32, which arrives unchanged.
    """
    if value == _UNSPECIFIED:
        if required:
            raise InvalidArgument(field, "must be specified")
        return
    if value not in known:
        raise InvalidArgument(field, f"unknown value {value}")


def check_statuses(field: str, values: Iterable[int]) -> None:
    for value in values:
        check_enum(field, value, STATUS_FROM_PROTO, required=True)


def payload_too_large(field: str, size: str, limits: Limits) -> LimitExceeded:
    """A payload past `max_payload_bytes`: a limit (RESOURCE_EXHAUSTED), not a malformed
    request, naming the field."""
    return LimitExceeded(
        "max_payload_bytes",
        f"{field}: is {size}; the limit is {limits.max_payload_bytes}",
        field=field,
    )


def check_payload(field: str, value: Struct, limits: Limits) -> dict[str, Any]:
    """The payload as a JSON object (converted once: the caller uses the result)."""
    if not value.fields:
        return {}
    size = value.ByteSize()
    if size > limits.max_payload_bytes:
        raise payload_too_large(field, f"{size} bytes serialized", limits)
    try:
        # NaN and Infinity have no JSON form, so they cannot be stored as given.
        payload = struct_to_dict(value)
    except ValueError as exc:
        raise InvalidArgument(field, f"is not a valid JSON object: {exc}") from None
    # As for JSON text: a Struct nested deeper would be stored, but its record would not
    # parse in any client's answer (a list page or a watch event holding it would fail
    # for everyone). A level takes at least 4 bytes, so small payloads need no walk.
    if size > 4 * MAX_JSON_DEPTH and _deeper_than(payload, MAX_JSON_DEPTH):
        raise InvalidArgument(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (it has no JSON form)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # e.g. 1e400: no double holds it, and it has no JSON form
        raise ValueError(f"number {text[:32]} is out of range")
    return value


# One decoder for every call (`json.loads` with options builds one each time). Ints
# stay exact Python ints; NaN, Infinity and overflowing floats are refused.
_JSON_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)
# A JSON payload may nest only as deep as its Struct form can still be decoded
# (protobuf's 100-message limit: Python reads 32 levels inside a watch event, not 33),
# so every record stays readable by clients of both payload formats.
MAX_JSON_DEPTH = 32
# A \uD800-\uDFFF escape: the text may hold an unpaired surrogate, which no UTF-8
# string (and so no answer) can carry.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_json_payload(
    field: str, text: str, limits: Limits, struct_field: str, struct_set: bool
) -> dict[str, Any]:
    """A payload sent as JSON object text (`field`) as a JSON object; its Struct form
    (`struct_field`) must be unset. Numbers are kept exactly as written."""
    if struct_set:
        raise InvalidArgument(field, f"cannot be combined with {struct_field}: set one of the two")
    size = len(text)
    if size * 4 > limits.max_payload_bytes:  # UTF-8 takes 1-4 bytes a character
        size = len(text.encode())
    if size > limits.max_payload_bytes:
        raise payload_too_large(field, f"{size} bytes as UTF-8", limits)
    try:
        value = _JSON_DECODER.decode(text)
    except RecursionError:
        raise InvalidArgument(field, f"is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgument(field, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"must be a JSON object, not {type(value).__name__}")
    # Counting brackets first spares the walk for nearly every payload.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidArgument(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            canonical_json(value).encode()
        except UnicodeEncodeError:
            raise InvalidArgument(field, "holds an unpaired UTF-16 surrogate escape") from None
    return value


def _deeper_than(value: dict[str, Any], limit: int) -> bool:
    """Whether containers nest more than `limit` levels (the object itself is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def check_duration(field: str, value: Duration) -> timedelta:
    """A well-formed Duration (proto rules: bounded seconds, nanos of the same sign)."""
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > _MAX_DURATION_SECONDS or not -999_999_999 <= nanos <= 999_999_999:
        raise InvalidArgument(field, "is not a valid duration")
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        raise InvalidArgument(field, "is not a valid duration (seconds and nanos differ in sign)")
    return value.ToTimedelta()


def check_revision(field: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")


def validate_create_run(
    request: pb.CreateRunRequest, limits: Limits
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checks the request; returns its metadata and kwargs as JSON objects."""
    check_id("thread_id", request.thread_id, limits)
    if request.HasField("assistant_id"):
        check_id("assistant_id", request.assistant_id, limits)
    if request.HasField("request_id"):
        check_id("request_id", request.request_id, limits)
    check_enum("on_disconnect", request.on_disconnect, DISCONNECT_FROM_PROTO, required=False)
    check_enum(
        "multitask_strategy", request.multitask_strategy, STRATEGY_FROM_PROTO, required=False
    )
    # Each payload as a Struct or as JSON text (`<name>_json`), never both.
    metadata = (
        check_json_payload(
            "metadata_json", request.metadata_json, limits, "metadata", request.HasField("metadata")
        )
        if request.metadata_json
        else check_payload("metadata", request.metadata, limits)
    )
    kwargs = (
        check_json_payload(
            "kwargs_json", request.kwargs_json, limits, "kwargs", request.HasField("kwargs")
        )
        if request.kwargs_json
        else check_payload("kwargs", request.kwargs, limits)
    )
    if request.HasField("timeout"):
        timeout = check_duration("timeout", request.timeout)
        # Stores keep microseconds, so anything shorter would be a zero timeout.
        if timeout < timedelta(microseconds=1):
            raise InvalidArgument("timeout", "must be positive (at least 1 microsecond)")
        if timeout > limits.max_run_timeout:
            raise InvalidArgument("timeout", f"must be at most {limits.max_run_timeout}")
    if not 0 <= request.max_attempts <= limits.max_attempts:
        raise InvalidArgument("max_attempts", f"must be between 0 and {limits.max_attempts}")
    return metadata, kwargs


def validate_get_run(request: pb.GetRunRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)


def validate_list_runs(request: pb.ListRunsRequest, limits: Limits) -> None:
    # An empty thread_id means "every thread"; a given one must be a valid id.
    if request.thread_id:
        check_id("thread_id", request.thread_id, limits)
    check_statuses("statuses", request.statuses)
    if not 0 <= request.page_size <= limits.max_page_size:
        raise InvalidArgument("page_size", f"must be between 0 and {limits.max_page_size}")
    # page_token is checked when decoded (it must match this request's filter).


def clipped(value: str, limit: int) -> str:
    """`value` cut to at most `limit` characters, ending in a marker saying how much
    was cut (for text a caller must never be refused for, like a worker's error)."""
    if len(value) <= limit:
        return value
    # The marker's length depends on the count it reports: grow the cut until the kept
    # text and the marker fit (two or three steps; the cut only grows).
    cut = len(value) - limit
    while (needed := len(value) - limit + len(TRUNCATION_MARKER.format(cut))) > cut:
        cut = needed
    if cut > len(value):  # a limit shorter than the marker itself
        return value[:limit]
    return value[: len(value) - cut] + TRUNCATION_MARKER.format(cut)


TRUNCATION_MARKER = "… [truncated {} characters]"


def validate_set_run_status(request: pb.SetRunStatusRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)
    check_enum("status", request.status, STATUS_FROM_PROTO, required=True)
    # `error` is not checked: too long, it is clipped (see `clipped`), never refused.
    if request.HasField("worker_id"):
        check_id("worker_id", request.worker_id, limits)
    if request.HasField("expected_mod_revision"):
        check_revision("expected_mod_revision", request.expected_mod_revision)
    if request.HasField("lease_ttl"):
        if request.status != STATUS_TO_PROTO[RunStatus.RUNNING]:
            raise InvalidArgument("lease_ttl", "is only taken with a claim (status RUNNING)")
        ttl = check_duration("lease_ttl", request.lease_ttl)
        if not limits.min_lease_ttl <= ttl <= limits.max_lease_ttl:
            raise InvalidArgument(
                "lease_ttl", f"must be between {limits.min_lease_ttl} and {limits.max_lease_ttl}"
            )


def validate_renew_run_lease(request: pb.RenewRunLeaseRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)
    check_id("worker_id", request.worker_id, limits)


def validate_cancel_run(request: pb.CancelRunRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)
    check_enum("action", request.action, CANCEL_ACTION_FROM_PROTO, required=False)
    if request.HasField("reason"):
        check_text("reason", request.reason, limits)


def validate_has_inflight(request: pb.HasInflightRequest, limits: Limits) -> None:
    check_id("thread_id", request.thread_id, limits)


def validate_delete_run(request: pb.DeleteRunRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)
    if request.HasField("expected_mod_revision"):
        check_revision("expected_mod_revision", request.expected_mod_revision)


def validate_wait_run(request: pb.WaitRunRequest, limits: Limits) -> None:
    check_id("run_id", request.run_id, limits)
    if request.HasField("timeout"):
        check_duration("timeout", request.timeout)
        # On the raw fields: -1 ns would round to a zero timedelta ("wait forever").
        if request.timeout.seconds < 0 or request.timeout.nanos < 0:
            raise InvalidArgument("timeout", "must not be negative")


def validate_watch_runs(request: pb.WatchRunsRequest, limits: Limits) -> None:
    if request.thread_id:
        check_id("thread_id", request.thread_id, limits)
    if len(request.run_ids) > limits.max_run_ids_filter:
        raise InvalidArgument("run_ids", f"must have at most {limits.max_run_ids_filter} ids")
    for run_id in request.run_ids:
        check_id("run_ids", run_id, limits)
    check_statuses("statuses", request.statuses)
    check_revision("start_revision", request.start_revision)
    # The initial set fixes its own revision (the snapshot's); a resume needs none.
    if request.send_initial and request.start_revision:
        raise InvalidArgument("send_initial", "cannot be combined with a non-zero start_revision")
    if request.HasField("progress_interval"):
        interval = check_duration("progress_interval", request.progress_interval)
        # Zero means the server default; otherwise keep heartbeats sane.
        if interval and not _MIN_PROGRESS_INTERVAL <= interval <= _MAX_PROGRESS_INTERVAL:
            raise InvalidArgument("progress_interval", "must be zero or between 100 ms and 1 hour")
