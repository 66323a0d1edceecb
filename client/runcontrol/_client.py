"""`AsyncClient` (grpc.aio) and `Client` (blocking): the RunControl API in Python terms.

Both take an address or an existing channel, apply a default per-call timeout, enable
the service-config retry policy for UNAVAILABLE on calls that are safe to repeat, and
raise typed `RunControlError`s. Requests and conversions live in `_requests`, shared by
both, so the two clients differ only in `await`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import grpc

from . import _requests as rq
from ._handle import AsyncRunHandle, RunHandle
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from ._watch import WatchItem, resuming_watch
from .errors import translated_errors
from .v1 import run_control_pb2 as pb
from .v1 import run_control_pb2_grpc

DEFAULT_TIMEOUT = 30.0
_UNSET: Any = object()


class AsyncClient:
    """Asynchronous RunControl client.

    ::

        async with AsyncClient("127.0.0.1:50051") as client:
            handle = await client.create_run("thread-1")
            await handle.wait(timeout=60)

    `credentials` makes a secure channel (`grpc.ssl_channel_credentials(...)`);
    `timeout` is the default per-call deadline in seconds (None: no deadline), and
    every method takes `timeout=` to override it.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give exactly one of target or channel")
        self._owns_channel = channel is None
        if channel is None:
            assert target is not None
            args = rq.channel_options(retry, options)
            channel = (
                grpc.aio.secure_channel(target, credentials, options=args)
                if credentials is not None
                else grpc.aio.insecure_channel(target, options=args)
            )
        self._channel = channel
        self._stub = run_control_pb2_grpc.RunControlStub(channel)
        self._timeout = timeout

    @property
    def stub(self) -> run_control_pb2_grpc.RunControlAsyncStub:
        """The generated stub, for calls this client does not wrap."""
        return self._stub

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _t(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is _UNSET else timeout

    async def create_run(
        self,
        thread_id: str,
        *,
        assistant_id: str | None = None,
        on_disconnect: DisconnectMode | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
        metadata: dict[str, Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        request_id: str | None = None,
        run_timeout: float | timedelta | None = None,
        timeout: float | None = _UNSET,
    ) -> AsyncRunHandle:
        """Create a run; `request_id` defaults to a fresh UUID so retries are safe."""
        request = rq.create_request(
            thread_id,
            assistant_id=assistant_id,
            on_disconnect=on_disconnect,
            multitask_strategy=multitask_strategy,
            metadata=metadata,
            kwargs=kwargs,
            request_id=request_id,
            run_timeout=run_timeout,
        )
        with translated_errors():
            response = await self._stub.CreateRun(request, timeout=self._t(timeout))
        return AsyncRunHandle(self, Run.from_proto(response.run), rq.creation_of(response))

    async def get_run(self, run_id: str, *, timeout: float | None = _UNSET) -> AsyncRunHandle:
        return AsyncRunHandle(self, await self.fetch_run(run_id, timeout=timeout))

    async def fetch_run(self, run_id: str, *, timeout: float | None = _UNSET) -> Run:
        with translated_errors():
            response = await self._stub.GetRun(
                pb.GetRunRequest(run_id=run_id), timeout=self._t(timeout)
            )
        return Run.from_proto(response.run)

    async def list_runs_page(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = _UNSET,
    ) -> rq.RunPage:
        request = rq.list_request(thread_id, statuses, page_size, page_token)
        with translated_errors():
            response = await self._stub.ListRuns(request, timeout=self._t(timeout))
        return rq.page_of(response)

    async def list_runs(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        timeout: float | None = _UNSET,
    ) -> AsyncIterator[Run]:
        """Every matching run, newest first, fetching pages as needed."""
        wanted = tuple(statuses)
        token = ""
        while True:
            page = await self.list_runs_page(
                thread_id=thread_id,
                statuses=wanted,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )
            for run in page.runs:
                yield run
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        worker_id: str | None = None,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Move a run; returns the record and whether anything changed."""
        request = rq.set_status_request(
            run_id,
            status,
            error=error,
            worker_id=worker_id,
            expected_mod_revision=expected_mod_revision,
        )
        with translated_errors():
            response = await self._stub.SetRunStatus(request, timeout=self._t(timeout))
        return Run.from_proto(response.run), response.changed

    async def cancel_run(
        self,
        run_id: str,
        *,
        action: CancelAction | None = None,
        reason: str | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Cancel a run; returns the record and whether this call cancelled it."""
        with translated_errors():
            response = await self._stub.CancelRun(
                rq.cancel_request(run_id, action, reason), timeout=self._t(timeout)
            )
        return Run.from_proto(response.run), response.cancelled

    async def has_inflight(self, thread_id: str, *, timeout: float | None = _UNSET) -> rq.Inflight:
        with translated_errors():
            response = await self._stub.HasInflight(
                pb.HasInflightRequest(thread_id=thread_id), timeout=self._t(timeout)
            )
        return rq.Inflight(response.has_inflight, tuple(response.run_ids), response.revision)

    async def delete_run(
        self,
        run_id: str,
        *,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> Run:
        with translated_errors():
            response = await self._stub.DeleteRun(
                rq.delete_request(run_id, expected_mod_revision), timeout=self._t(timeout)
            )
        return Run.from_proto(response.run)

    async def wait_run(
        self, run_id: str, *, timeout: float | timedelta | None = None, attach: bool = False
    ) -> tuple[Run, bool]:
        """Block until the run is terminal or `timeout` passes; returns (record, done).

        The call itself has no deadline beyond `timeout` (plus a margin for the answer).
        A `timeout` of zero or less does not wait: it reads the run once.
        """
        wait_for = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if wait_for is not None and wait_for <= 0:
            # WaitRun reads a zero timeout as "no limit": answer a poll from GetRun.
            run = await self.fetch_run(run_id)
            return run, run.is_terminal
        with translated_errors():
            response = await self._stub.WaitRun(
                rq.wait_request(run_id, timeout, attach),
                timeout=None if wait_for is None else wait_for + 10.0,
            )
        return Run.from_proto(response.run), response.done

    def watch(
        self,
        *,
        thread_id: str | None = None,
        run_ids: Iterable[str] = (),
        statuses: Iterable[RunStatus] = (),
        start_revision: int = 0,
        send_initial: bool = False,
        progress_interval: float | None = None,
        bookmarks: bool = False,
        max_reconnects: int | None = None,
    ) -> AsyncIterator[WatchItem]:
        """Watch changes; survives reconnects and compaction (see `resuming_watch`)."""
        request = pb.WatchRunsRequest(
            thread_id=thread_id or "",
            run_ids=list(run_ids),
            statuses=[s.value for s in statuses],
            start_revision=start_revision,
            send_initial=send_initial,
        )
        interval = rq.duration(progress_interval)
        if interval is not None:
            request.progress_interval.CopyFrom(interval)

        def open_stream(attempt: pb.WatchRunsRequest) -> Any:
            # wait_for_ready: a reconnect waits for the server to come back instead of
            # failing at once while the channel is reconnecting.
            return self._stub.WatchRuns(attempt, wait_for_ready=True)

        async def current_revision() -> int:
            # Pins a watch "from now" before its first stream: a reconnect before the
            # first message then resumes from here instead of from a later "now".
            response = await self._stub.ListRuns(
                pb.ListRunsRequest(page_size=1), timeout=self._timeout
            )
            return response.revision

        return resuming_watch(
            open_stream,
            request,
            bookmarks=bookmarks,
            max_reconnects=max_reconnects,
            current_revision=current_revision,
        )


class Client:
    """Blocking RunControl client with the same methods as `AsyncClient` (no watch)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give exactly one of target or channel")
        self._owns_channel = channel is None
        if channel is None:
            assert target is not None
            args = rq.channel_options(retry, options)
            channel = (
                grpc.secure_channel(target, credentials, options=args)
                if credentials is not None
                else grpc.insecure_channel(target, options=args)
            )
        self._channel = channel
        self._stub = run_control_pb2_grpc.RunControlStub(channel)
        self._timeout = timeout

    @property
    def stub(self) -> run_control_pb2_grpc.RunControlStub:
        return self._stub

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _t(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is _UNSET else timeout

    def create_run(
        self,
        thread_id: str,
        *,
        assistant_id: str | None = None,
        on_disconnect: DisconnectMode | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
        metadata: dict[str, Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        request_id: str | None = None,
        run_timeout: float | timedelta | None = None,
        timeout: float | None = _UNSET,
    ) -> RunHandle:
        request = rq.create_request(
            thread_id,
            assistant_id=assistant_id,
            on_disconnect=on_disconnect,
            multitask_strategy=multitask_strategy,
            metadata=metadata,
            kwargs=kwargs,
            request_id=request_id,
            run_timeout=run_timeout,
        )
        with translated_errors():
            response = self._stub.CreateRun(request, timeout=self._t(timeout))
        return RunHandle(self, Run.from_proto(response.run), rq.creation_of(response))

    def get_run(self, run_id: str, *, timeout: float | None = _UNSET) -> RunHandle:
        return RunHandle(self, self.fetch_run(run_id, timeout=timeout))

    def fetch_run(self, run_id: str, *, timeout: float | None = _UNSET) -> Run:
        with translated_errors():
            response = self._stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=self._t(timeout))
        return Run.from_proto(response.run)

    def list_runs_page(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = _UNSET,
    ) -> rq.RunPage:
        request = rq.list_request(thread_id, statuses, page_size, page_token)
        with translated_errors():
            response = self._stub.ListRuns(request, timeout=self._t(timeout))
        return rq.page_of(response)

    def list_runs(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        timeout: float | None = _UNSET,
    ) -> Iterator[Run]:
        wanted = tuple(statuses)
        token = ""
        while True:
            page = self.list_runs_page(
                thread_id=thread_id,
                statuses=wanted,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )
            yield from page.runs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        worker_id: str | None = None,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        request = rq.set_status_request(
            run_id,
            status,
            error=error,
            worker_id=worker_id,
            expected_mod_revision=expected_mod_revision,
        )
        with translated_errors():
            response = self._stub.SetRunStatus(request, timeout=self._t(timeout))
        return Run.from_proto(response.run), response.changed

    def cancel_run(
        self,
        run_id: str,
        *,
        action: CancelAction | None = None,
        reason: str | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        with translated_errors():
            response = self._stub.CancelRun(
                rq.cancel_request(run_id, action, reason), timeout=self._t(timeout)
            )
        return Run.from_proto(response.run), response.cancelled

    def has_inflight(self, thread_id: str, *, timeout: float | None = _UNSET) -> rq.Inflight:
        with translated_errors():
            response = self._stub.HasInflight(
                pb.HasInflightRequest(thread_id=thread_id), timeout=self._t(timeout)
            )
        return rq.Inflight(response.has_inflight, tuple(response.run_ids), response.revision)

    def delete_run(
        self,
        run_id: str,
        *,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> Run:
        with translated_errors():
            response = self._stub.DeleteRun(
                rq.delete_request(run_id, expected_mod_revision), timeout=self._t(timeout)
            )
        return Run.from_proto(response.run)

    def wait_run(
        self, run_id: str, *, timeout: float | timedelta | None = None, attach: bool = False
    ) -> tuple[Run, bool]:
        wait_for = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if wait_for is not None and wait_for <= 0:
            run = self.fetch_run(run_id)
            return run, run.is_terminal
        with translated_errors():
            response = self._stub.WaitRun(
                rq.wait_request(run_id, timeout, attach),
                timeout=None if wait_for is None else wait_for + 10.0,
            )
        return Run.from_proto(response.run), response.done
