"""The RunControl gRPC servicer: validate -> call the manager -> convert.

No rules live here. Every handler body runs inside `mapped_errors`, so every
failure is answered from the one error table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc

from ..domain.manager import RunManager
from ..domain.model import ListQuery
from . import validation
from .convert import (
    CANCEL_ACTION_FROM_PROTO,
    DISCONNECT_FROM_PROTO,
    STATUS_FROM_PROTO,
    STRATEGY_FROM_PROTO,
    run_to_proto,
    struct_to_dict,
)
from .errors import mapped_errors
from .limits import Limits
from .page_token import PageTokenCodec, filter_digest
from .wait import wait_run
from .watch import EventEncoder, watch_runs

_Context = grpc.aio.ServicerContext[Any, Any]


class RunControlServicer(run_control_pb2_grpc.RunControlServicer):
    """gRPC face of a `RunManager`.

    `page_token_key` signs ListRuns page tokens; replicas serving the same clients
    must share it (None: a random key per process, see `page_token`).
    """

    def __init__(
        self,
        manager: RunManager,
        *,
        limits: Limits = Limits(),  # noqa: B008 - frozen, so sharing the default is safe
        page_token_key: bytes | None = None,
    ) -> None:
        self._manager = manager
        self._limits = limits
        self._tokens = PageTokenCodec(page_token_key)
        # One per servicer: every WatchRuns stream shares the encoded events.
        self._events = EventEncoder()

    @property
    def manager(self) -> RunManager:
        return self._manager

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: _Context
    ) -> pb.CreateRunResponse:
        async with mapped_errors(context):
            validation.validate_create_run(request, self._limits)
            outcome = await self._manager.create_run(
                request.thread_id,
                assistant_id=request.assistant_id if request.HasField("assistant_id") else None,
                # UNSPECIFIED (0) is absent from the maps: the manager applies the default.
                on_disconnect=DISCONNECT_FROM_PROTO.get(request.on_disconnect),
                multitask_strategy=STRATEGY_FROM_PROTO.get(request.multitask_strategy),
                metadata=struct_to_dict(request.metadata),
                kwargs=struct_to_dict(request.kwargs),
                request_id=request.request_id if request.HasField("request_id") else None,
                run_timeout=request.timeout.ToTimedelta() if request.HasField("timeout") else None,
            )
            response = pb.CreateRunResponse(
                queued_behind_run_ids=outcome.queued_behind, replayed=outcome.replayed
            )
            run_to_proto(outcome.run, response.run)
            for interrupted in outcome.interrupted:
                run_to_proto(interrupted, response.interrupted_runs.add())
            return response

    async def GetRun(self, request: pb.GetRunRequest, context: _Context) -> pb.GetRunResponse:
        async with mapped_errors(context):
            validation.validate_get_run(request, self._limits)
            run = await self._manager.get_run(request.run_id)
            response = pb.GetRunResponse()
            run_to_proto(run, response.run)
            return response

    async def ListRuns(self, request: pb.ListRunsRequest, context: _Context) -> pb.ListRunsResponse:
        async with mapped_errors(context):
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
            response = pb.ListRunsResponse(revision=page.revision)
            for run in page.runs:
                run_to_proto(run, response.runs.add())
            if page.next_cursor is not None:
                response.next_page_token = self._tokens.encode(page.next_cursor, digest)
            return response

    async def SetRunStatus(
        self, request: pb.SetRunStatusRequest, context: _Context
    ) -> pb.SetRunStatusResponse:
        async with mapped_errors(context):
            validation.validate_set_run_status(request, self._limits)
            outcome = await self._manager.set_status(
                request.run_id,
                STATUS_FROM_PROTO[request.status],
                error=request.error if request.HasField("error") else None,
                worker_id=request.worker_id if request.HasField("worker_id") else None,
                expected_mod_revision=(
                    request.expected_mod_revision
                    if request.HasField("expected_mod_revision")
                    else None
                ),
            )
            response = pb.SetRunStatusResponse(changed=outcome.changed)
            run_to_proto(outcome.run, response.run)
            return response

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: _Context
    ) -> pb.CancelRunResponse:
        async with mapped_errors(context):
            validation.validate_cancel_run(request, self._limits)
            outcome = await self._manager.cancel_run(
                request.run_id,
                action=CANCEL_ACTION_FROM_PROTO.get(request.action),
                reason=request.reason if request.HasField("reason") else None,
            )
            response = pb.CancelRunResponse(cancelled=outcome.cancelled)
            run_to_proto(outcome.run, response.run)
            return response

    async def HasInflight(
        self, request: pb.HasInflightRequest, context: _Context
    ) -> pb.HasInflightResponse:
        async with mapped_errors(context):
            validation.validate_has_inflight(request, self._limits)
            inflight = await self._manager.has_inflight(request.thread_id)
            return pb.HasInflightResponse(
                has_inflight=bool(inflight.run_ids),
                run_ids=inflight.run_ids,
                revision=inflight.revision,
            )

    async def DeleteRun(
        self, request: pb.DeleteRunRequest, context: _Context
    ) -> pb.DeleteRunResponse:
        async with mapped_errors(context):
            validation.validate_delete_run(request, self._limits)
            outcome = await self._manager.delete_run(
                request.run_id,
                expected_mod_revision=(
                    request.expected_mod_revision
                    if request.HasField("expected_mod_revision")
                    else None
                ),
            )
            response = pb.DeleteRunResponse(revision=outcome.revision)
            run_to_proto(outcome.run, response.run)
            return response

    async def WaitRun(self, request: pb.WaitRunRequest, context: _Context) -> pb.WaitRunResponse:
        async with mapped_errors(context):
            return await wait_run(self._manager, request, self._limits)

    # Yields serialized WatchRunsResponse bytes (encode once, see `watch`), so it must be
    # registered with `watch.add_to_server`, which passes them through.
    async def WatchRuns(  # type: ignore[override]
        self, request: pb.WatchRunsRequest, context: _Context
    ) -> AsyncIterator[bytes]:
        # aclosing: closing this generator closes the stream's, freeing its watcher at once.
        stream = watch_runs(request, context, self._manager, self._limits, self._events)
        async with aclosing(stream):
            async for message in stream:
                yield message
