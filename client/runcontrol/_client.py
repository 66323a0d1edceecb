"""`AsyncClient` (grpc.aio) and `Client` (blocking): the RunControl API in Python terms.

Both take an address or an existing channel, apply a default per-call timeout, enable
the service-config retry policy for UNAVAILABLE on calls that are safe to repeat, and
raise typed `RunControlError`s. Every call is built once, as data, in `_calls`; the two
clients differ only in how they send it (`await` or not) and in the handle they return.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import grpc

from . import _auth
from . import _calls as calls
from . import _requests as rq
from ._blocking import BlockingStream, iterate
from ._handle import AsyncRunHandle, RunHandle
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from ._watch import WatchItem, resuming_watch
from .errors import translated_errors
from .v1 import run_control_pb2 as pb
from .v1 import run_control_pb2_grpc

DEFAULT_TIMEOUT = 30.0
_UNSET: Any = object()
T = TypeVar("T")


class _ClientBase:
    """What both clients share: how the channel is made, the default deadline."""

    def __init__(
        self,
        target: str | None,
        channel: Any,
        credentials: grpc.ChannelCredentials | None,
        tls_and_token: dict[str, Any],
        timeout: float | None,
        retry: bool,
        options: Sequence[tuple[str, Any]],
        *,
        aio: bool,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give exactly one of target or channel")
        self._owns_channel = channel is None
        if channel is None:
            assert target is not None
            security = _auth.resolve(credentials=credentials, **tls_and_token)
            make = security.aio_channel if aio else security.channel
            channel = make(target, rq.channel_options(retry, options))
        else:
            _auth.check_no_channel_settings(**tls_and_token)
        self._channel = channel
        # Any: the one generated class serves a sync or an aio channel (see `stub`).
        self._stub: Any = run_control_pb2_grpc.RunControlStub(channel)
        self._timeout = timeout

    def _t(self, timeout: float | None) -> float | None:
        """The call's deadline: its own `timeout=`, else the client's default."""
        return self._timeout if timeout is _UNSET else timeout


_DOCS = """

    `credentials` makes a secure channel (`grpc.ssl_channel_credentials(...)`), as do
    `root_certificates` (the server CA's PEM) and `client_certificate` / `client_key`
    (mutual TLS); `token` is sent as `authorization: Bearer <token>` on every call.
    Left out, those four come from `RUNCONTROL_TOKEN`, `RUNCONTROL_TLS_CA`,
    `RUNCONTROL_TLS_CLIENT_CERT` and `RUNCONTROL_TLS_CLIENT_KEY` (files) when set.
    `timeout` is the default per-call deadline in seconds (None: no deadline), and
    every method takes `timeout=` to override it.
"""


class AsyncClient(_ClientBase):
    """Asynchronous RunControl client.

    ::

        async with AsyncClient("127.0.0.1:50051") as client:
            handle = await client.create_run("thread-1")
            await handle.wait(timeout=60)
    """

    __doc__ = (__doc__ or "") + _DOCS

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = _auth.UNSET,
        root_certificates: bytes | None = _auth.UNSET,
        client_certificate: bytes | None = _auth.UNSET,
        client_key: bytes | None = _auth.UNSET,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        tls_and_token = {
            "token": token,
            "root_certificates": root_certificates,
            "client_certificate": client_certificate,
            "client_key": client_key,
        }
        super().__init__(
            target, channel, credentials, tls_and_token, timeout, retry, options, aio=True
        )

    @property
    def stub(self) -> run_control_pb2_grpc.RunControlAsyncStub:
        """The generated stub, for calls this client does not wrap."""
        return cast("run_control_pb2_grpc.RunControlAsyncStub", self._stub)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, call: calls.Call[T]) -> T:
        with translated_errors():
            response = await getattr(self._stub, call.rpc)(
                call.request, timeout=rq.deadline(call.timeout), metadata=rq.CALL_METADATA
            )
        return call.decode(response)

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
        max_attempts: int | None = None,
        timeout: float | None = _UNSET,
    ) -> AsyncRunHandle:
        """Create a run; `request_id` defaults to a fresh UUID so retries are safe.

        `metadata` and `kwargs` travel as JSON text, so integers come back exact;
        values JSON cannot hold (NaN, sets, ...) raise ValueError / TypeError before
        anything is sent. `run_timeout` bounds the run itself (its deadline), not this
        call. `max_attempts` (1-100) lets a run whose worker's lease lapses go back to
        PENDING that many claims in all.
        """
        run, creation = await self._send(
            calls.create_run(
                thread_id,
                assistant_id=assistant_id,
                on_disconnect=on_disconnect,
                multitask_strategy=multitask_strategy,
                metadata=metadata,
                kwargs=kwargs,
                request_id=request_id,
                run_timeout=run_timeout,
                max_attempts=max_attempts,
                timeout=self._t(timeout),
            )
        )
        return AsyncRunHandle(self, run, creation)

    async def get_run(self, run_id: str, *, timeout: float | None = _UNSET) -> AsyncRunHandle:
        """A handle on an existing run (RunNotFound if there is none)."""
        return AsyncRunHandle(self, await self.fetch_run(run_id, timeout=timeout))

    async def fetch_run(self, run_id: str, *, timeout: float | None = _UNSET) -> Run:
        """The run as stored now."""
        return await self._send(calls.get_run(run_id, self._t(timeout)))

    async def list_runs_page(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = _UNSET,
    ) -> rq.RunPage:
        """One page of runs, newest first (`page_token`: the previous page's next one)."""
        return await self._send(
            calls.list_runs_page(thread_id, statuses, page_size, page_token, self._t(timeout))
        )

    async def list_runs(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        timeout: float | None = _UNSET,
    ) -> AsyncIterator[Run]:
        """Every matching run, newest first, fetching pages as needed."""
        wanted, token = tuple(statuses), ""
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
        lease_ttl: float | timedelta | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Move a run; returns the record and whether anything changed.

        With a claim (RUNNING), `lease_ttl` takes a lease the worker must renew
        (`renew_lease`) before it lapses; see `AsyncRunHandle.claimed`, which does so.
        """
        return await self._send(
            calls.set_status(
                run_id,
                status,
                error=error,
                worker_id=worker_id,
                expected_mod_revision=expected_mod_revision,
                lease_ttl=lease_ttl,
                timeout=self._t(timeout),
            )
        )

    async def renew_lease(
        self, run_id: str, worker_id: str, *, timeout: float | None = _UNSET
    ) -> tuple[Run, datetime]:
        """Renew the lease `worker_id` holds on a claimed run; returns the run and when
        the lease now lapses (server clock). Raises `LeaseNotHeld` when the run is no
        longer this worker's (finished, cancelled, or the lease lapsed): stop working."""
        return await self._send(calls.renew_lease(run_id, worker_id, self._t(timeout)))

    async def cancel_run(
        self,
        run_id: str,
        *,
        action: CancelAction | None = None,
        reason: str | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Cancel a run; returns the record and whether this call cancelled it."""
        return await self._send(calls.cancel_run(run_id, action, reason, self._t(timeout)))

    async def has_inflight(self, thread_id: str, *, timeout: float | None = _UNSET) -> rq.Inflight:
        """The thread's active runs (truthy when there are any)."""
        return await self._send(calls.has_inflight(thread_id, self._t(timeout)))

    async def delete_run(
        self,
        run_id: str,
        *,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> Run:
        """Remove a finished run; returns it as it was."""
        return await self._send(calls.delete_run(run_id, expected_mod_revision, self._t(timeout)))

    async def wait_run(
        self, run_id: str, *, timeout: float | timedelta | None = None, attach: bool = False
    ) -> tuple[Run, bool]:
        """Block until the run is terminal or `timeout` passes; returns (record, done).

        The call itself has no deadline beyond `timeout` (plus a margin for the answer).
        A `timeout` of zero or less does not wait: it reads the run once.
        """
        call = calls.wait_run(run_id, timeout, attach)
        if call is None:
            run = await self.fetch_run(run_id)
            return run, run.is_terminal
        return await self._send(call)

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
        request = calls.watch_request(
            thread_id, run_ids, statuses, start_revision, send_initial, progress_interval
        )

        def open_stream(attempt: pb.WatchRunsRequest) -> Any:
            # wait_for_ready: a reconnect waits for the server to come back instead of
            # failing at once while the channel is reconnecting.
            return self._stub.WatchRuns(attempt, wait_for_ready=True, metadata=rq.CALL_METADATA)

        async def current_revision() -> int:
            response = await self._stub.ListRuns(
                calls.CURRENT_REVISION_REQUEST,
                timeout=rq.deadline(self._timeout),
                metadata=rq.CALL_METADATA,
            )
            return int(response.revision)

        return resuming_watch(
            open_stream,
            request,
            bookmarks=bookmarks,
            max_reconnects=max_reconnects,
            current_revision=current_revision,
        )


class Client(_ClientBase):
    """Blocking RunControl client: the same methods as `AsyncClient`, without `await`.

    ::

        with Client("127.0.0.1:50051") as client:
            handle = client.create_run("thread-1")
            handle.wait(timeout=60)
    """

    __doc__ = (__doc__ or "") + _DOCS

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = _auth.UNSET,
        root_certificates: bytes | None = _auth.UNSET,
        client_certificate: bytes | None = _auth.UNSET,
        client_key: bytes | None = _auth.UNSET,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        tls_and_token = {
            "token": token,
            "root_certificates": root_certificates,
            "client_certificate": client_certificate,
            "client_key": client_key,
        }
        super().__init__(
            target, channel, credentials, tls_and_token, timeout, retry, options, aio=False
        )

    @property
    def stub(self) -> run_control_pb2_grpc.RunControlStub:
        """The generated stub, for calls this client does not wrap."""
        return cast("run_control_pb2_grpc.RunControlStub", self._stub)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        with translated_errors():
            response = getattr(self._stub, call.rpc)(
                call.request, timeout=rq.deadline(call.timeout), metadata=rq.CALL_METADATA
            )
        return call.decode(response)

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
        max_attempts: int | None = None,
        timeout: float | None = _UNSET,
    ) -> RunHandle:
        """Create a run (see `AsyncClient.create_run`)."""
        run, creation = self._send(
            calls.create_run(
                thread_id,
                assistant_id=assistant_id,
                on_disconnect=on_disconnect,
                multitask_strategy=multitask_strategy,
                metadata=metadata,
                kwargs=kwargs,
                request_id=request_id,
                run_timeout=run_timeout,
                max_attempts=max_attempts,
                timeout=self._t(timeout),
            )
        )
        return RunHandle(self, run, creation)

    def get_run(self, run_id: str, *, timeout: float | None = _UNSET) -> RunHandle:
        """A handle on an existing run (RunNotFound if there is none)."""
        return RunHandle(self, self.fetch_run(run_id, timeout=timeout))

    def fetch_run(self, run_id: str, *, timeout: float | None = _UNSET) -> Run:
        """The run as stored now."""
        return self._send(calls.get_run(run_id, self._t(timeout)))

    def list_runs_page(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = _UNSET,
    ) -> rq.RunPage:
        """One page of runs, newest first (`page_token`: the previous page's next one)."""
        return self._send(
            calls.list_runs_page(thread_id, statuses, page_size, page_token, self._t(timeout))
        )

    def list_runs(
        self,
        *,
        thread_id: str | None = None,
        statuses: Iterable[RunStatus] = (),
        page_size: int = 0,
        timeout: float | None = _UNSET,
    ) -> Iterator[Run]:
        """Every matching run, newest first, fetching pages as needed."""
        wanted, token = tuple(statuses), ""
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
        lease_ttl: float | timedelta | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Move a run; returns the record and whether anything changed (see
        `AsyncClient.set_status`)."""
        return self._send(
            calls.set_status(
                run_id,
                status,
                error=error,
                worker_id=worker_id,
                expected_mod_revision=expected_mod_revision,
                lease_ttl=lease_ttl,
                timeout=self._t(timeout),
            )
        )

    def renew_lease(
        self, run_id: str, worker_id: str, *, timeout: float | None = _UNSET
    ) -> tuple[Run, datetime]:
        """Renew a claim's lease (see `AsyncClient.renew_lease`)."""
        return self._send(calls.renew_lease(run_id, worker_id, self._t(timeout)))

    def cancel_run(
        self,
        run_id: str,
        *,
        action: CancelAction | None = None,
        reason: str | None = None,
        timeout: float | None = _UNSET,
    ) -> tuple[Run, bool]:
        """Cancel a run; returns the record and whether this call cancelled it."""
        return self._send(calls.cancel_run(run_id, action, reason, self._t(timeout)))

    def has_inflight(self, thread_id: str, *, timeout: float | None = _UNSET) -> rq.Inflight:
        """The thread's active runs (truthy when there are any)."""
        return self._send(calls.has_inflight(thread_id, self._t(timeout)))

    def delete_run(
        self,
        run_id: str,
        *,
        expected_mod_revision: int | None = None,
        timeout: float | None = _UNSET,
    ) -> Run:
        """Remove a finished run; returns it as it was."""
        return self._send(calls.delete_run(run_id, expected_mod_revision, self._t(timeout)))

    def wait_run(
        self, run_id: str, *, timeout: float | timedelta | None = None, attach: bool = False
    ) -> tuple[Run, bool]:
        """Block until the run is terminal or `timeout` passes (see
        `AsyncClient.wait_run`)."""
        call = calls.wait_run(run_id, timeout, attach)
        if call is None:
            run = self.fetch_run(run_id)
            return run, run.is_terminal
        return self._send(call)

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
    ) -> Iterator[WatchItem]:
        """Watch changes, blocking: the same resuming watch as `AsyncClient.watch`
        (reconnects, resyncs, bookmarks). Leave the loop (or `close()` the iterator)
        to end the stream."""
        request = calls.watch_request(
            thread_id, run_ids, statuses, start_revision, send_initial, progress_interval
        )

        def open_stream(attempt: pb.WatchRunsRequest) -> BlockingStream:
            return BlockingStream(
                self._stub.WatchRuns(attempt, wait_for_ready=True, metadata=rq.CALL_METADATA)
            )

        async def current_revision() -> int:
            response = self._stub.ListRuns(
                calls.CURRENT_REVISION_REQUEST,
                timeout=rq.deadline(self._timeout),
                metadata=rq.CALL_METADATA,
            )
            return int(response.revision)

        return iterate(
            resuming_watch(
                open_stream,
                request,
                bookmarks=bookmarks,
                max_reconnects=max_reconnects,
                current_revision=current_revision,
            )
        )
