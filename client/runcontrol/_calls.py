"""Every RunControl call as data: the RPC, its request, its deadline and how its answer
is read. `AsyncClient` and `Client` share these and differ only in how they send one
(`await` or not), the way httpx's two clients share `BaseClient`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from . import _requests as rq
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from .v1 import run_control_pb2 as pb

T = TypeVar("T")

#: A WaitRun's own deadline: its `timeout` plus this margin for the answer to arrive
#: (the server answers `done = false` at `timeout`; the call must not fail first).
WAIT_ANSWER_MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One unary call: `rpc` (the stub's method name), `request`, the call's deadline
    in seconds (None: none) and `decode`, which turns the response into the result."""

    rpc: str
    request: Message
    timeout: float | None
    decode: Callable[[Any], T]


def _record(response: Any) -> Run:
    return Run.from_proto(response.run)


def create_run(
    thread_id: str,
    *,
    assistant_id: str | None,
    on_disconnect: DisconnectMode | None,
    multitask_strategy: MultitaskStrategy | None,
    metadata: dict[str, Any] | None,
    kwargs: dict[str, Any] | None,
    request_id: str | None,
    run_timeout: float | timedelta | None,
    max_attempts: int | None,
    timeout: float | None,
) -> Call[tuple[Run, rq.Creation]]:
    request = rq.create_request(
        thread_id,
        assistant_id=assistant_id,
        on_disconnect=on_disconnect,
        multitask_strategy=multitask_strategy,
        metadata=metadata,
        kwargs=kwargs,
        request_id=request_id,
        run_timeout=run_timeout,
        max_attempts=max_attempts,
    )
    return Call("CreateRun", request, timeout, lambda r: (Run.from_proto(r.run), rq.creation_of(r)))


def get_run(run_id: str, timeout: float | None) -> Call[Run]:
    return Call("GetRun", pb.GetRunRequest(run_id=run_id), timeout, _record)


def list_runs_page(
    thread_id: str | None,
    statuses: Iterable[RunStatus],
    page_size: int,
    page_token: str,
    timeout: float | None,
) -> Call[rq.RunPage]:
    request = rq.list_request(thread_id, statuses, page_size, page_token)
    return Call("ListRuns", request, timeout, rq.page_of)


def set_status(
    run_id: str,
    status: RunStatus,
    *,
    error: str | None,
    worker_id: str | None,
    expected_mod_revision: int | None,
    lease_ttl: float | timedelta | None,
    timeout: float | None,
) -> Call[tuple[Run, bool]]:
    request = rq.set_status_request(
        run_id,
        status,
        error=error,
        worker_id=worker_id,
        expected_mod_revision=expected_mod_revision,
        lease_ttl=lease_ttl,
    )
    return Call("SetRunStatus", request, timeout, lambda r: (Run.from_proto(r.run), r.changed))


def renew_lease(run_id: str, worker_id: str, timeout: float | None) -> Call[tuple[Run, datetime]]:
    request = pb.RenewRunLeaseRequest(run_id=run_id, worker_id=worker_id)
    return Call(
        "RenewRunLease",
        request,
        timeout,
        lambda r: (Run.from_proto(r.run), r.lease_expires_at.ToDatetime(tzinfo=UTC)),
    )


def cancel_run(
    run_id: str, action: CancelAction | None, reason: str | None, timeout: float | None
) -> Call[tuple[Run, bool]]:
    request = rq.cancel_request(run_id, action, reason)
    return Call("CancelRun", request, timeout, lambda r: (Run.from_proto(r.run), r.cancelled))


def has_inflight(thread_id: str, timeout: float | None) -> Call[rq.Inflight]:
    return Call(
        "HasInflight",
        pb.HasInflightRequest(thread_id=thread_id),
        timeout,
        lambda r: rq.Inflight(r.has_inflight, tuple(r.run_ids), r.revision),
    )


def delete_run(run_id: str, expected_mod_revision: int | None, timeout: float | None) -> Call[Run]:
    return Call("DeleteRun", rq.delete_request(run_id, expected_mod_revision), timeout, _record)


def wait_run(
    run_id: str, timeout: float | timedelta | None, attach: bool
) -> Call[tuple[Run, bool]] | None:
    """The WaitRun call, or None when `timeout` is zero or less: WaitRun reads a zero
    timeout as "no limit", so such a poll is answered by GetRun instead."""
    wait_for = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if wait_for is not None and wait_for <= 0:
        return None
    return Call(
        "WaitRun",
        rq.wait_request(run_id, timeout, attach),
        None if wait_for is None else wait_for + WAIT_ANSWER_MARGIN,
        lambda r: (Run.from_proto(r.run), r.done),
    )


def watch_request(
    thread_id: str | None,
    run_ids: Iterable[str],
    statuses: Iterable[RunStatus],
    start_revision: int,
    send_initial: bool,
    progress_interval: float | None,
) -> pb.WatchRunsRequest:
    request = pb.WatchRunsRequest(
        thread_id=thread_id or "",
        run_ids=list(run_ids),
        statuses=[s.value for s in statuses],
        start_revision=start_revision,
        send_initial=send_initial,
    )
    interval = rq.duration("progress_interval", progress_interval)
    if interval is not None:
        request.progress_interval.CopyFrom(interval)
    return request


# Pins a watch "from now" before its first stream: a reconnect before the first message
# then resumes from this revision instead of from a later "now".
CURRENT_REVISION_REQUEST = pb.ListRunsRequest(page_size=1)
