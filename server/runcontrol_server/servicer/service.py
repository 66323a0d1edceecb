"""The RunControl gRPC servicer: validate -> call the manager -> encode.

No rules and no statuses live here: handlers raise, and the one wrapper every handler
is registered in (`wire.add_to_server` -> `malformed.refusing_malformed`) answers each
failure from the one error table (`errors.ERROR_TABLE`).
"""

from __future__ import annotations

from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc

from ..domain.manager import RunManager
from ..domain.model import ListQuery
from . import validation, wire
from .convert import (
    CANCEL_ACTION_FROM_PROTO,
    DISCONNECT_FROM_PROTO,
    STATUS_FROM_PROTO,
    STRATEGY_FROM_PROTO,
)
from .limits import Limits
from .page_token import PageTokenCodec, filter_digest
from .payload_format import wants_json
from .peers import PeerSlots
from .wait import wait_run
from .watch import EventEncoder, watch_runs
from .wire import DEFAULT_RECORD_CACHE_SIZE, RecordCache

_Context = grpc.aio.ServicerContext[Any, Any]


class RunControlServicer(run_control_pb2_grpc.RunControlServicer):
    """gRPC face of a `RunManager`.

    `page_token_key` signs ListRuns page tokens; replicas serving the same clients
    must share it (None: a random key per process, see `page_token`).
    `record_cache_size` bounds the runs whose encoded record is kept (see `wire`).
    """

    def __init__(
        self,
        manager: RunManager,
        *,
        limits: Limits = Limits(),  # noqa: B008 - frozen, so sharing the default is safe
        page_token_key: bytes | None = None,
        record_cache_size: int = DEFAULT_RECORD_CACHE_SIZE,
    ) -> None:
        self._manager = manager
        self._limits = limits
        self._tokens = PageTokenCodec(page_token_key)
        # Streams and waits each peer holds open (`peers`).
        self._watch_slots = PeerSlots(
            "max_watchers_per_peer", limits.max_watchers_per_peer, "WatchRuns streams"
        )
        self._wait_slots = PeerSlots(
            "max_waiters_per_peer", limits.max_waiters_per_peer, "waiting WaitRun calls"
        )
        # One per servicer: each run is encoded once per revision for every answer
        # that carries it, and every WatchRuns stream shares the encoded events.
        self._records = RecordCache(record_cache_size)
        self._events = EventEncoder(self._records)
        # The same for calls that asked for JSON payloads (see `payload_format`): one
        # cache per format, so one format's bytes never answer the other.
        self._json_records = RecordCache(record_cache_size, payload_json=True)
        self._json_events = EventEncoder(self._json_records)

    @property
    def manager(self) -> RunManager:
        return self._manager

    def _records_for(self, context: _Context) -> RecordCache:
        """The record cache of the payload format the call asked for."""
        return self._json_records if wants_json(context) else self._records

    # CreateRun, GetRun, ListRuns, SetRunStatus, CancelRun and DeleteRun answer
    # serialized response bytes assembled from each run's once-encoded record (see
    # `wire`), so they must be registered with `wire.add_to_server`, which passes them
    # through. Clients see ordinary messages.

    async def CreateRun(  # type: ignore[override]
        self, request: pb.CreateRunRequest, context: _Context
    ) -> bytes:
        metadata, kwargs = validation.validate_create_run(request, self._limits)
        outcome = await self._manager.create_run(
            request.thread_id,
            assistant_id=request.assistant_id if request.HasField("assistant_id") else None,
            # UNSPECIFIED (0) is absent from the maps: the manager applies the default.
            on_disconnect=DISCONNECT_FROM_PROTO.get(request.on_disconnect),
            multitask_strategy=STRATEGY_FROM_PROTO.get(request.multitask_strategy),
            metadata=metadata,
            kwargs=kwargs,
            request_id=request.request_id if request.HasField("request_id") else None,
            run_timeout=request.timeout.ToTimedelta() if request.HasField("timeout") else None,
            max_attempts=request.max_attempts or 1,
        )
        encode = self._records_for(context).encode
        return wire.create_run_response(
            encode(outcome.run),
            [encode(run) for run in outcome.interrupted],
            outcome.queued_behind,
            outcome.replayed,
        )

    async def GetRun(self, request: pb.GetRunRequest, context: _Context) -> bytes:  # type: ignore[override]
        validation.validate_get_run(request, self._limits)
        run = await self._manager.get_run(request.run_id)
        return wire.get_run_response(self._records_for(context).encode(run))

    async def ListRuns(self, request: pb.ListRunsRequest, context: _Context) -> bytes:  # type: ignore[override]
        validation.validate_list_runs(request, self._limits)
        thread_id = request.thread_id or None
        statuses = frozenset(STATUS_FROM_PROTO[s] for s in request.statuses)
        digest = filter_digest(thread_id, statuses)
        after = self._tokens.decode(request.page_token, digest) if request.page_token else None
        query = ListQuery(
            thread_id,
            statuses,
            request.page_size or self._limits.default_page_size,
            after=after,
        )
        page = await self._manager.list_runs(query)
        token = (
            self._tokens.encode(page.next_cursor, digest) if page.next_cursor is not None else ""
        )
        return wire.list_runs_response(
            map(self._records_for(context).encode, page.runs), token, page.revision
        )

    async def SetRunStatus(  # type: ignore[override]
        self, request: pb.SetRunStatusRequest, context: _Context
    ) -> bytes:
        validation.validate_set_run_status(request, self._limits)
        outcome = await self._manager.set_status(
            request.run_id,
            STATUS_FROM_PROTO[request.status],
            error=(
                validation.clipped(request.error, self._limits.max_text_length)
                if request.HasField("error")
                else None
            ),
            worker_id=request.worker_id if request.HasField("worker_id") else None,
            expected_mod_revision=(
                request.expected_mod_revision if request.HasField("expected_mod_revision") else None
            ),
            lease_ttl=request.lease_ttl.ToTimedelta() if request.HasField("lease_ttl") else None,
        )
        return wire.record_and_flag(self._records_for(context).encode(outcome.run), outcome.changed)

    async def CancelRun(  # type: ignore[override]
        self, request: pb.CancelRunRequest, context: _Context
    ) -> bytes:
        validation.validate_cancel_run(request, self._limits)
        outcome = await self._manager.cancel_run(
            request.run_id,
            action=CANCEL_ACTION_FROM_PROTO.get(request.action),
            reason=request.reason if request.HasField("reason") else None,
        )
        return wire.record_and_flag(
            self._records_for(context).encode(outcome.run), outcome.cancelled
        )

    async def HasInflight(
        self, request: pb.HasInflightRequest, context: _Context
    ) -> pb.HasInflightResponse:
        validation.validate_has_inflight(request, self._limits)
        inflight = await self._manager.has_inflight(request.thread_id)
        return pb.HasInflightResponse(
            has_inflight=bool(inflight.run_ids),
            run_ids=inflight.run_ids,
            revision=inflight.revision,
        )

    async def DeleteRun(  # type: ignore[override]
        self, request: pb.DeleteRunRequest, context: _Context
    ) -> bytes:
        validation.validate_delete_run(request, self._limits)
        outcome = await self._manager.delete_run(
            request.run_id,
            expected_mod_revision=(
                request.expected_mod_revision if request.HasField("expected_mod_revision") else None
            ),
        )
        return wire.delete_run_response(
            self._records_for(context).encode(outcome.run), outcome.revision
        )

    async def RenewRunLease(  # type: ignore[override]
        self, request: pb.RenewRunLeaseRequest, context: _Context
    ) -> bytes:
        validation.validate_renew_run_lease(request, self._limits)
        run, lapse = await self._manager.renew_lease(request.run_id, request.worker_id)
        return wire.renew_run_lease_response(lapse, self._records_for(context).encode(run))

    async def WaitRun(self, request: pb.WaitRunRequest, context: _Context) -> bytes:  # type: ignore[override]
        run, done = await wait_run(
            self._manager, request, self._limits, self._wait_slots, context.peer()
        )
        return wire.record_and_flag(self._records_for(context).encode(run), done)

    # Writes serialized WatchRunsResponse bytes (encode once, see `watch`), so it must be
    # registered with `wire.add_to_server`, which passes them through. A coroutine using
    # `context.write`, not an async generator: grpc.aio serves a coroutine-function
    # server-stream handler with its writer API, sparing a generator step per message.
    # The generated base declares an iterator return, hence the ignore.
    async def WatchRuns(  # type: ignore[override]
        self, request: pb.WatchRunsRequest, context: _Context
    ) -> None:
        events = self._json_events if wants_json(context) else self._events
        await watch_runs(request, context, self._manager, self._limits, events, self._watch_slots)
