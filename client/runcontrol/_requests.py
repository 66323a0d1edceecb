"""Request building and response reading shared by the async and the sync client."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2

from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from .v1 import run_control_pb2 as pb

SERVICE = "runcontrol.v1.RunControl"
# Calls that are safe to repeat after UNAVAILABLE: reads, and writes whose repeat is a
# no-op by contract (SetRunStatus repeats are idempotent, CancelRun is idempotent,
# CreateRun always carries a request_id from this client). DeleteRun is not: a repeat
# after a lost answer would report RUN_NOT_FOUND. WatchRuns resumes on its own.
RETRYABLE_METHODS = (
    "CreateRun",
    "GetRun",
    "ListRuns",
    "SetRunStatus",
    "CancelRun",
    "HasInflight",
    "WaitRun",
    "RenewRunLease",  # a heartbeat: repeating it changes nothing
)


# Sent with every call: answers carry payloads as JSON text (`metadata_json`), so
# integers come back as ints, at any size; a Struct would make them doubles.
PAYLOAD_FORMAT_HEADER = "runcontrol-payload-format"
CALL_METADATA = ((PAYLOAD_FORMAT_HEADER, "json"),)


def service_config(max_attempts: int = 5) -> str:
    """gRPC service config: retry UNAVAILABLE with exponential backoff on safe calls."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE, "method": m} for m in RETRYABLE_METHODS],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


# Ping a silent connection every 30 s (the server accepts one per 10 s), so a replica
# or proxy that went away is noticed during a long WaitRun or an idle watch.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def channel_options(retry: bool, extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if retry else 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]
    if retry:
        options.append(("grpc.service_config", service_config()))
    options.extend(extra)
    return options


#: The longest deadline handed to grpc: beyond ~7e9 s from now grpc's nanosecond
#: deadline overflows and the call fails at once with DEADLINE_EXCEEDED. 1e9 s (~31
#: years) is "no deadline" for any caller.
MAX_DEADLINE = 1e9


def deadline(timeout: float | None) -> float | None:
    """A call's `timeout=` as grpc can take it (clamped to MAX_DEADLINE)."""
    return timeout if timeout is None or timeout <= MAX_DEADLINE else MAX_DEADLINE


#: google.protobuf.Duration's range: +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000


def duration(name: str, value: float | timedelta | None) -> duration_pb2.Duration | None:
    """`value` (seconds or a timedelta) as a Duration; ValueError naming `name` when it
    is not finite or beyond a Duration's range, before anything is sent."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION_SECONDS:
        raise ValueError(
            f"{name} must be a finite number of seconds, at most {MAX_DURATION_SECONDS}"
            f" (10,000 years) either way, not {value!r}"
        )
    result = duration_pb2.Duration()
    result.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return result


@dataclass(frozen=True, slots=True)
class Creation:
    """What CreateRun decided besides the new run."""

    interrupted_runs: tuple[Run, ...]
    queued_behind_run_ids: tuple[str, ...]
    replayed: bool


def create_request(
    thread_id: str,
    *,
    assistant_id: str | None,
    on_disconnect: DisconnectMode | None,
    multitask_strategy: MultitaskStrategy | None,
    metadata: dict[str, Any] | None,
    kwargs: dict[str, Any] | None,
    request_id: str | None,
    run_timeout: float | timedelta | None,
    max_attempts: int | None = None,
) -> pb.CreateRunRequest:
    request = pb.CreateRunRequest(
        thread_id=thread_id,
        # Always an idempotency key, so the transparent retry of CreateRun is safe.
        request_id=request_id if request_id is not None else str(uuid.uuid4()),
    )
    if assistant_id is not None:
        request.assistant_id = assistant_id
    if on_disconnect is not None:
        request.on_disconnect = on_disconnect.value
    if multitask_strategy is not None:
        request.multitask_strategy = multitask_strategy.value
    if metadata:
        request.metadata_json = payload_json("metadata", metadata)
    if kwargs:
        request.kwargs_json = payload_json("kwargs", kwargs)
    if max_attempts is not None:
        request.max_attempts = max_attempts
    timeout = duration("run_timeout", run_timeout)
    if timeout is not None:
        request.timeout.CopyFrom(timeout)
    return request


def payload_json(name: str, value: dict[str, Any]) -> str:
    """A payload as compact JSON text (exact integers, unlike a Struct's doubles).

    Raises TypeError / ValueError (NaN, Infinity, unpaired surrogates, values JSON cannot
    hold) naming the payload, before anything is sent.
    """
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict (a JSON object), not {type(value).__name__}")
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"{name} is not valid JSON: {exc}") from None
    if not text.isascii():
        try:  # json writes a lone surrogate; the wire's UTF-8 cannot carry it
            text.encode()
        except UnicodeEncodeError as exc:
            held = text[max(exc.start - 20, 0) : exc.end + 20]
            message = f"{name} holds an unpaired UTF-16 surrogate (not UTF-8): {held!r}"
            raise ValueError(message) from None
    return text


def creation_of(response: pb.CreateRunResponse) -> Creation:
    return Creation(
        tuple(Run.from_proto(r) for r in response.interrupted_runs),
        tuple(response.queued_behind_run_ids),
        response.replayed,
    )


def set_status_request(
    run_id: str,
    status: RunStatus,
    *,
    error: str | None,
    worker_id: str | None,
    expected_mod_revision: int | None,
    lease_ttl: float | timedelta | None = None,
) -> pb.SetRunStatusRequest:
    request = pb.SetRunStatusRequest(run_id=run_id, status=status.value)
    lease = duration("lease_ttl", lease_ttl)
    if lease is not None:
        request.lease_ttl.CopyFrom(lease)
    if error is not None:
        request.error = error
    if worker_id is not None:
        request.worker_id = worker_id
    if expected_mod_revision is not None:
        request.expected_mod_revision = expected_mod_revision
    return request


def cancel_request(
    run_id: str, action: CancelAction | None, reason: str | None
) -> pb.CancelRunRequest:
    request = pb.CancelRunRequest(run_id=run_id)
    if action is not None:
        request.action = action.value
    if reason is not None:
        request.reason = reason
    return request


def list_request(
    thread_id: str | None, statuses: Iterable[RunStatus], page_size: int, page_token: str
) -> pb.ListRunsRequest:
    return pb.ListRunsRequest(
        thread_id=thread_id or "",
        statuses=[s.value for s in statuses],
        page_size=page_size,
        page_token=page_token,
    )


def wait_request(run_id: str, timeout: float | timedelta | None, attach: bool) -> pb.WaitRunRequest:
    request = pb.WaitRunRequest(run_id=run_id, attach=attach)
    wait_for = duration("timeout", timeout)
    if wait_for is not None:
        request.timeout.CopyFrom(wait_for)
    return request


def delete_request(run_id: str, expected_mod_revision: int | None) -> pb.DeleteRunRequest:
    request = pb.DeleteRunRequest(run_id=run_id)
    if expected_mod_revision is not None:
        request.expected_mod_revision = expected_mod_revision
    return request


@dataclass(frozen=True, slots=True)
class RunPage:
    """One ListRuns page: the runs, the token of the next page ("" = last) and the revision."""

    runs: tuple[Run, ...]
    next_page_token: str
    revision: int


def page_of(response: pb.ListRunsResponse) -> RunPage:
    return RunPage(
        tuple(Run.from_proto(r) for r in response.runs), response.next_page_token, response.revision
    )


@dataclass(frozen=True, slots=True)
class Inflight:
    """HasInflight's answer; truthy exactly when the thread has active runs, so
    `if await client.has_inflight(thread):` reads as it did with the original."""

    has_inflight: bool
    run_ids: tuple[str, ...]
    revision: int

    def __bool__(self) -> bool:
        return self.has_inflight
