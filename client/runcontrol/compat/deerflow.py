"""deer-flow's in-process `RunManager`, with its names and behaviour, over runcontrol.

``RunManager()`` runs embedded: this project's own domain manager over an in-memory
store, in this process. ``RunManager(address="host:port")`` (or ``RUNCONTROL_ADDR`` in the
environment) uses a running service through `runcontrol.AsyncClient`. Nothing connects,
and no task starts, before the first awaited call, so the constructor needs no loop.

`get` answers synchronously from a local cache of live `RunRecord`s (the client-go
informer pattern): the object `create` returned is the one `get` returns, updated in
place from the answers of this manager's own calls (read-your-writes) and from a
background watch (WatchRuns remotely, a domain watcher embedded), so a cancel made by
*any* client reaches every holder: `abort_action` and `abort_event` are set and the
record's `task` is cancelled, as the original's `cancel()` did in-process.

Where the original allowed what the service forbids, the nearest legal path is taken:

* `create` never rejects (the original ignored the strategy): it creates with ENQUEUE,
  so on a busy thread the run waits behind the active ones instead of running beside
  them (claiming it before they end is refused, which `set_status` logs).
* `set_status(success)` on a pending run claims it first (worker id of this manager).
* `set_status` never raises for a refusal (the original never did): a late write after
  a cancel leaves the run INTERRUPTED (an ERROR with a message by the claiming worker is
  kept as the run's note), a refused move is logged and the record refreshed.
* `cleanup` of an active run cancels it, then deletes it.

Timestamps are ISO-8601 strings, as in the original. A record this manager created
keeps the `created_at` of its own clock (`_now_iso`, as the original took it), so
`list_by_thread` orders it exactly as the original did: newest `created_at` first,
runs with equal timestamps in creation order. Records learned from the service (runs
other clients made) carry the service's timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from runcontrol import AsyncClient
    from runcontrol import Run as ClientRun
    from runcontrol_server.domain import Run as DomainRun
    from runcontrol_server.domain import RunManager as DomainManager
    from runcontrol_server.domain import Watcher

__all__ = [
    "ConflictError",
    "DisconnectMode",
    "RunManager",
    "RunRecord",
    "RunStatus",
    "UnsupportedStrategyError",
]

logger = logging.getLogger(__name__)

ADDRESS_ENV = "RUNCONTROL_ADDR"
_SUPPORTED_STRATEGIES = ("reject", "interrupt", "rollback")


class RunStatus(StrEnum):
    """Lifecycle status of a single run."""

    pending = "pending"
    running = "running"
    success = "success"
    error = "error"
    timeout = "timeout"
    interrupted = "interrupted"


class DisconnectMode(StrEnum):
    """Behaviour when the SSE consumer disconnects."""

    cancel = "cancel"
    continue_ = "continue"


_ACTIVE = (RunStatus.pending, RunStatus.running)


def _now_iso() -> str:
    """The original's clock for `created_at` (tests may pin it)."""
    return datetime.now(UTC).isoformat()


class ConflictError(Exception):
    """Raised when multitask_strategy=reject and thread has inflight runs."""


class UnsupportedStrategyError(Exception):
    """Raised when a multitask_strategy value is not yet implemented."""


@dataclass
class RunRecord:
    """Mutable record for a single run (kept current in place by its `RunManager`)."""

    run_id: str
    thread_id: str
    assistant_id: str | None
    status: RunStatus
    on_disconnect: DisconnectMode
    multitask_strategy: str = "reject"
    metadata: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    abort_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    abort_action: str = "interrupt"
    error: str | None = None
    # Not in the original: what the service knows beyond it.
    worker_id: str | None = field(default=None, repr=False, compare=False)
    mod_revision: int = field(default=0, repr=False, compare=False)


# -- what the two backends answer, in one neutral form ----------------------------------


class _Snap(NamedTuple):
    run_id: str
    thread_id: str
    assistant_id: str | None
    status: str
    on_disconnect: str
    multitask_strategy: str
    metadata: dict[str, Any]
    kwargs: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    error: str | None
    cancel_action: str
    cancel_reason: str | None
    worker_id: str | None
    mod_revision: int


class _Put(NamedTuple):
    snap: _Snap


class _Gone(NamedTuple):
    run_id: str
    revision: int


class _Reset(NamedTuple):
    snaps: tuple[_Snap, ...]
    revision: int


_Update = _Put | _Gone | _Reset


class _NotFound(Exception):
    pass


class _Busy(Exception):
    pass


class _Active(Exception):
    pass


class _Refused(Exception):
    """A status change the service refused (illegal move or someone else's claim)."""

    def __init__(self, message: str, *, from_status: str | None, claimed: bool) -> None:
        super().__init__(message)
        self.from_status = from_status
        self.claimed = claimed


def _snap_of_domain(run: DomainRun) -> _Snap:
    return _Snap(
        run.run_id,
        run.thread_id,
        run.assistant_id,
        run.status.value,
        run.on_disconnect.value,
        run.multitask_strategy.value,
        run.metadata,
        run.kwargs,
        run.created_at,
        run.updated_at,
        run.error,
        run.cancel_action.value,
        run.cancel_reason,
        run.worker_id,
        run.mod_revision,
    )


def _snap_of_client(run: ClientRun) -> _Snap:
    return _Snap(
        run.run_id,
        run.thread_id,
        run.assistant_id,
        run.status.name.lower(),
        run.on_disconnect.name.lower(),
        run.multitask_strategy.name.lower(),
        run.metadata,
        run.kwargs,
        run.created_at,
        run.updated_at,
        run.error,
        run.cancel_action.name.lower(),
        run.cancel_reason,
        run.worker_id,
        run.mod_revision,
    )


class _Embedded:
    """The project's own domain manager in this process (default: over a fresh
    in-memory store, owned and closed by us)."""

    def __init__(self, manager: DomainManager | None) -> None:
        self._manager = manager
        self._owned = manager is None
        self._watcher: Watcher | None = None

    @property
    def m(self) -> DomainManager:
        assert self._manager is not None, "not opened"
        return self._manager

    async def open(self) -> None:
        # Imported here, not at module level: the client package does not depend on the
        # server package unless an embedded manager is actually used.
        from runcontrol_server.domain import RunManager as DomainManager
        from runcontrol_server.domain import WatchFilter
        from runcontrol_server.stores import InMemoryRunStore

        if self._manager is None:
            self._manager = DomainManager(InMemoryRunStore())
        await self._manager.start()
        # Registered now, before any call: it sees every later change.
        self._watcher = await self._manager.watch(WatchFilter())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self._owned and self._manager is not None:
            await self._manager.close()

    async def updates(self) -> AsyncIterator[_Update]:
        from runcontrol_server.domain import (
            EventType,
            RevisionCompacted,
            ShuttingDown,
            WatchFilter,
        )

        while self._watcher is not None:
            watcher = self._watcher
            try:
                async for batch in watcher:
                    for event in batch.events:
                        run = event.change.run
                        if event.type is EventType.DELETED:
                            yield _Gone(run.run_id, event.revision)
                        else:
                            yield _Put(_snap_of_domain(run))
                return
            except ShuttingDown:
                return
            except RevisionCompacted:
                # Fell behind the history: re-list at one revision, watch from there.
                watcher.close()
                self._watcher = await self.m.watch(WatchFilter())
                runs, revision = await self.m.snapshot(None, frozenset())
                await self.m.seek(self._watcher, revision + 1)
                yield _Reset(tuple(_snap_of_domain(r) for r in runs), revision)

    async def create(
        self,
        thread_id: str,
        assistant_id: str | None,
        on_disconnect: str,
        strategy: str,
        metadata: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> tuple[_Snap, tuple[_Snap, ...]]:
        from runcontrol_server.domain import DisconnectMode as DM
        from runcontrol_server.domain import MultitaskStrategy, ThreadBusy

        try:
            outcome = await self.m.create_run(
                thread_id,
                assistant_id=assistant_id,
                on_disconnect=DM(on_disconnect),
                multitask_strategy=MultitaskStrategy(strategy),
                metadata=metadata,
                kwargs=kwargs,
                request_id=str(uuid.uuid4()),
            )
        except ThreadBusy as busy:
            raise _Busy(str(busy)) from busy
        return _snap_of_domain(outcome.run), tuple(map(_snap_of_domain, outcome.interrupted))

    async def get(self, run_id: str) -> _Snap:
        from runcontrol_server.domain import RunNotFound

        try:
            return _snap_of_domain(await self.m.get_run(run_id))
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing

    async def list_thread(self, thread_id: str) -> list[_Snap]:
        from runcontrol_server.domain import ListQuery

        result: list[_Snap] = []
        query = ListQuery(thread_id=thread_id, limit=200)
        while True:
            page = await self.m.list_runs(query)
            result.extend(map(_snap_of_domain, page.runs))
            if page.next_cursor is None:
                return result
            query = ListQuery(thread_id=thread_id, limit=200, after=page.next_cursor)

    async def set_status(
        self, run_id: str, status: str, error: str | None, worker_id: str | None
    ) -> _Snap:
        from runcontrol_server.domain import AlreadyClaimed, InvalidTransition, RunNotFound
        from runcontrol_server.domain import RunStatus as RS

        try:
            outcome = await self.m.set_status(run_id, RS(status), error=error, worker_id=worker_id)
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        except InvalidTransition as refused:
            raise _Refused(str(refused), from_status=refused.from_status, claimed=False) from None
        except AlreadyClaimed as refused:
            raise _Refused(str(refused), from_status=None, claimed=True) from None
        return _snap_of_domain(outcome.run)

    async def cancel(self, run_id: str, action: str) -> tuple[_Snap, bool]:
        from runcontrol_server.domain import CancelAction, RunNotFound

        try:
            outcome = await self.m.cancel_run(run_id, action=CancelAction(action))
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        return _snap_of_domain(outcome.run), outcome.cancelled

    async def has_inflight(self, thread_id: str) -> bool:
        return bool(await self.m.has_inflight(thread_id))

    async def delete(self, run_id: str) -> None:
        from runcontrol_server.domain import RunActive, RunNotFound

        try:
            await self.m.delete_run(run_id)
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        except RunActive as active:
            raise _Active(run_id) from active


class _Remote:
    """A running service through `AsyncClient` (made here unless one is given)."""

    def __init__(self, address: str | None, client: AsyncClient | None) -> None:
        self._address = address
        self._client = client
        self._owned = client is None

    @property
    def c(self) -> AsyncClient:
        assert self._client is not None, "not opened"
        return self._client

    async def open(self) -> None:
        from runcontrol import AsyncClient

        if self._client is None:
            self._client = AsyncClient(self._address)

    async def close(self) -> None:
        if self._owned and self._client is not None:
            await self._client.close()

    async def updates(self) -> AsyncIterator[_Update]:
        from runcontrol import EventType, Resynced, WatchEvent

        # With the initial set: a watch that opens late still ends at the current state.
        async for item in self.c.watch(send_initial=True):
            if isinstance(item, WatchEvent):
                if item.type is EventType.DELETED:
                    yield _Gone(item.run.run_id, item.revision)
                else:
                    yield _Put(_snap_of_client(item.run))
            elif isinstance(item, Resynced):
                yield _Reset(tuple(map(_snap_of_client, item.runs)), item.revision)

    async def create(
        self,
        thread_id: str,
        assistant_id: str | None,
        on_disconnect: str,
        strategy: str,
        metadata: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> tuple[_Snap, tuple[_Snap, ...]]:
        from runcontrol import DisconnectMode as DM
        from runcontrol import MultitaskStrategy, ThreadBusy

        try:
            handle = await self.c.create_run(
                thread_id,
                assistant_id=assistant_id,
                on_disconnect=DM[on_disconnect.upper()],
                multitask_strategy=MultitaskStrategy[strategy.upper()],
                metadata=metadata,
                kwargs=kwargs,
            )
        except ThreadBusy as busy:
            raise _Busy(str(busy)) from busy
        creation = handle.creation
        interrupted = creation.interrupted_runs if creation is not None else ()
        return _snap_of_client(handle.run), tuple(map(_snap_of_client, interrupted))

    async def get(self, run_id: str) -> _Snap:
        from runcontrol import RunNotFound

        try:
            return _snap_of_client(await self.c.fetch_run(run_id))
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing

    async def list_thread(self, thread_id: str) -> list[_Snap]:
        return [_snap_of_client(run) async for run in self.c.list_runs(thread_id=thread_id)]

    async def set_status(
        self, run_id: str, status: str, error: str | None, worker_id: str | None
    ) -> _Snap:
        from runcontrol import AlreadyClaimed, InvalidTransition, RunNotFound
        from runcontrol import RunStatus as RS

        try:
            run, _ = await self.c.set_status(
                run_id, RS[status.upper()], error=error, worker_id=worker_id
            )
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        except InvalidTransition as refused:
            from_status = (refused.from_status or "").lower() or None
            if from_status is not None and from_status.startswith("run_status_"):
                from_status = from_status.removeprefix("run_status_")
            raise _Refused(str(refused), from_status=from_status, claimed=False) from None
        except AlreadyClaimed as refused:
            raise _Refused(str(refused), from_status=None, claimed=True) from None
        return _snap_of_client(run)

    async def cancel(self, run_id: str, action: str) -> tuple[_Snap, bool]:
        from runcontrol import CancelAction, RunNotFound

        try:
            run, cancelled = await self.c.cancel_run(run_id, action=CancelAction[action.upper()])
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        return _snap_of_client(run), cancelled

    async def has_inflight(self, thread_id: str) -> bool:
        return (await self.c.has_inflight(thread_id)).has_inflight

    async def delete(self, run_id: str) -> None:
        from runcontrol import RunActive, RunNotFound

        try:
            await self.c.delete_run(run_id)
        except RunNotFound as missing:
            raise _NotFound(run_id) from missing
        except RunActive as active:
            raise _Active(run_id) from active


_Backend = _Embedded | _Remote


class RunManager:
    """deer-flow's run registry over runcontrol (see the module docstring).

    `address` (default: ``$RUNCONTROL_ADDR``) selects a running service, `client` an
    existing `AsyncClient` for one; otherwise the manager is embedded, over
    `domain_manager` when given (e.g. shared with a server in this process) or over a
    fresh in-memory store. `worker_id` names this manager's claims (default: a new
    ``compat-<uuid>``): keep one per manager so retried claims stay idempotent.
    Use ``async with`` or `aclose()` to stop its background watch and connection.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: AsyncClient | None = None,
        domain_manager: DomainManager | None = None,
        worker_id: str | None = None,
    ) -> None:
        if client is None and domain_manager is None and address is None:
            address = os.environ.get(ADDRESS_ENV) or None
        if sum(x is not None for x in (address, client, domain_manager)) > 1:
            raise ValueError("give at most one of address, client or domain_manager")
        self._backend: _Backend = (
            _Remote(address, client)
            if address is not None or client is not None
            else _Embedded(domain_manager)
        )
        self.worker_id = worker_id or f"compat-{uuid.uuid4()}"
        self._runs: dict[str, RunRecord] = {}
        self._opened = False
        self._closed = False
        self._open_lock: asyncio.Lock | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def remote(self) -> bool:
        return isinstance(self._backend, _Remote)

    # -- lifecycle -------------------------------------------------------------------

    async def _ready(self) -> _Backend:
        if self._closed:
            raise RuntimeError("RunManager is closed")
        if not self._opened:
            if self._open_lock is None:
                self._open_lock = asyncio.Lock()
            async with self._open_lock:
                if not self._opened:
                    await self._backend.open()
                    self._watch_task = asyncio.get_running_loop().create_task(
                        self._follow(), name="runcontrol-compat-watch"
                    )
                    self._opened = True
        return self._backend

    async def _follow(self) -> None:
        try:
            async for update in self._backend.updates():
                if isinstance(update, _Put):
                    self._apply(update.snap)
                elif isinstance(update, _Gone):
                    self._forget(update.run_id, update.revision)
                else:
                    self._reset(update.snaps, update.revision)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("runcontrol compat watch ended; records update from answers only")

    async def aclose(self) -> None:
        """Stop the background watch and release the connection / embedded manager."""
        if self._closed:
            return
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._opened:
            await self._backend.close()

    async def __aenter__(self) -> RunManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the local cache -------------------------------------------------------------

    def _apply(self, snap: _Snap) -> RunRecord:
        """The live record of `snap`'s run, updated to it unless it is older."""
        record = self._runs.get(snap.run_id)
        if record is None:
            record = RunRecord(
                run_id=snap.run_id,
                thread_id=snap.thread_id,
                assistant_id=snap.assistant_id,
                status=RunStatus(snap.status),
                on_disconnect=DisconnectMode(snap.on_disconnect),
                multitask_strategy=snap.multitask_strategy,
                metadata=snap.metadata,
                kwargs=snap.kwargs,
                created_at=snap.created_at.isoformat(),
                updated_at=snap.updated_at.isoformat(),
                error=snap.error,
                worker_id=snap.worker_id,
                mod_revision=snap.mod_revision,
            )
            if record.status is RunStatus.interrupted:
                record.abort_action = snap.cancel_action
            self._runs[snap.run_id] = record
            return record
        if snap.mod_revision < record.mod_revision:
            return record  # an older answer or event than what the record shows
        was_active = record.status in _ACTIVE
        record.status = RunStatus(snap.status)
        record.updated_at = snap.updated_at.isoformat()
        record.error = snap.error
        record.worker_id = snap.worker_id
        record.mod_revision = snap.mod_revision
        # A cancel (CancelRun, or a newer run's INTERRUPT/ROLLBACK) carries a reason; a
        # worker reporting INTERRUPTED itself does not, and is not aborted again.
        if was_active and record.status is RunStatus.interrupted and snap.cancel_reason is not None:
            self._abort(record, snap.cancel_action)
        return record

    @staticmethod
    def _abort(record: RunRecord, action: str) -> None:
        record.abort_action = action
        record.abort_event.set()
        if record.task is not None and not record.task.done():
            record.task.cancel()
        logger.info("Run %s cancelled (action=%s)", record.run_id, action)

    def _forget(self, run_id: str, revision: int) -> None:
        record = self._runs.get(run_id)
        if record is not None and record.mod_revision <= revision:
            del self._runs[run_id]

    def _reset(self, snaps: tuple[_Snap, ...], revision: int) -> None:
        present = {snap.run_id for snap in snaps}
        for run_id in [r for r in self._runs if r not in present]:
            self._forget(run_id, revision)
        for snap in snaps:
            self._apply(snap)

    # -- the original's API ----------------------------------------------------------

    async def create(
        self,
        thread_id: str,
        assistant_id: str | None = None,
        *,
        on_disconnect: DisconnectMode = DisconnectMode.cancel,
        metadata: dict[str, Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        multitask_strategy: str = "reject",
    ) -> RunRecord:
        """Create a new pending run and register it (never rejects: see the module doc)."""
        record, _ = await self._create(
            thread_id, assistant_id, on_disconnect, metadata, kwargs, "enqueue"
        )
        record.multitask_strategy = multitask_strategy  # as the caller named it
        logger.info("Run created: run_id=%s thread_id=%s", record.run_id, thread_id)
        return record

    async def _create(
        self,
        thread_id: str,
        assistant_id: str | None,
        on_disconnect: DisconnectMode,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any] | None,
        strategy: str,
    ) -> tuple[RunRecord, int]:
        backend = await self._ready()
        metadata = metadata or {}
        kwargs = kwargs or {}
        snap, interrupted = await backend.create(
            thread_id,
            assistant_id,
            DisconnectMode(on_disconnect).value,
            strategy,
            metadata,
            kwargs,
        )
        for other in interrupted:
            self._apply(other)
        record = self._apply(snap)
        # The creator's clock, as the original took it (both, unless the record already
        # shows a later change another client made).
        record.created_at = _now_iso()
        if record.mod_revision == snap.mod_revision:
            record.updated_at = record.created_at
        # The caller's own objects, as the original kept them (the service's copy went
        # through JSON).
        record.metadata, record.kwargs = metadata, kwargs
        return record, len(interrupted)

    def get(self, run_id: str) -> RunRecord | None:
        """Return a run record by ID, or ``None`` (from the local cache, no I/O)."""
        return self._runs.get(run_id)

    async def list_by_thread(self, thread_id: str) -> list[RunRecord]:
        """Return all runs for a given thread, newest first."""
        backend = await self._ready()
        # The service lists newest first; the original sorted by created_at, newest
        # first, keeping creation order among equal timestamps (a stable sort).
        records = [self._apply(snap) for snap in reversed(await backend.list_thread(thread_id))]
        return sorted(records, key=lambda record: record.created_at, reverse=True)

    async def set_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        """Transition a run to a new status (never raises for a refused move)."""
        backend = await self._ready()
        status = RunStatus(status)
        try:
            if status is RunStatus.pending:
                snap = await backend.get(run_id)
                if snap.status != RunStatus.pending:
                    logger.warning("Run %s cannot go back to pending (%s)", run_id, snap.status)
                self._apply(snap)
                return
            if status is RunStatus.running:
                self._apply(await backend.set_status(run_id, "running", error, self.worker_id))
            else:
                await self._finish(backend, run_id, status, error)
        except _NotFound:
            logger.warning("set_status called for unknown run %s", run_id)
            self._runs.pop(run_id, None)
            return
        except _Refused as refused:
            logger.warning("Run %s -> %s refused: %s", run_id, status.value, refused)
            with contextlib.suppress(_NotFound):
                self._apply(await backend.get(run_id))
            return
        logger.info("Run %s -> %s", run_id, status.value)

    async def _finish(
        self, backend: _Backend, run_id: str, status: RunStatus, error: str | None
    ) -> None:
        record = self._runs.get(run_id)
        mine = record is None or record.worker_id in (None, self.worker_id)
        worker = self.worker_id if mine else None
        try:
            self._apply(await backend.set_status(run_id, status.value, error, worker))
            return
        except _Refused as refused:
            if refused.claimed:
                # Someone else's claim: the original let anyone finish a run.
                self._apply(await backend.set_status(run_id, status.value, error, None))
                return
            if refused.from_status != RunStatus.pending.value:
                if refused.from_status in (RunStatus.interrupted.value, None):
                    # A late write after a cancel: the cancel stands.
                    logger.info("Run %s was cancelled; %s not recorded", run_id, status.value)
                    with contextlib.suppress(_NotFound):
                        self._apply(await backend.get(run_id))
                    return
                raise
        # PENDING -> SUCCESS is not a move: claim first, then finish.
        self._apply(await backend.set_status(run_id, "running", None, self.worker_id))
        self._apply(await backend.set_status(run_id, status.value, error, self.worker_id))

    async def cancel(self, run_id: str, *, action: str = "interrupt") -> bool:
        """Request cancellation of a run ("interrupt" or "rollback").

        Sets the abort event with the action and cancels the record's task, here and in
        every other manager holding the record. True if the run was in flight.
        """
        if action not in ("interrupt", "rollback"):
            raise ValueError(f"unknown cancel action {action!r}")
        backend = await self._ready()
        try:
            snap, cancelled = await backend.cancel(run_id, action)
        except _NotFound:
            return False
        self._apply(snap)
        return cancelled

    async def create_or_reject(
        self,
        thread_id: str,
        assistant_id: str | None = None,
        *,
        on_disconnect: DisconnectMode = DisconnectMode.cancel,
        metadata: dict[str, Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        multitask_strategy: str = "reject",
    ) -> RunRecord:
        """Atomically check for inflight runs and create a new one.

        ``reject`` raises `ConflictError` if the thread has a pending/running run;
        ``interrupt``/``rollback`` cancel the inflight runs in the same atomic step.
        """
        if multitask_strategy not in _SUPPORTED_STRATEGIES:
            raise UnsupportedStrategyError(
                f"Multitask strategy '{multitask_strategy}' is not yet supported. "
                f"Supported strategies: {', '.join(_SUPPORTED_STRATEGIES)}"
            )
        try:
            record, interrupted = await self._create(
                thread_id, assistant_id, on_disconnect, metadata, kwargs, multitask_strategy
            )
        except _Busy:
            raise ConflictError(f"Thread {thread_id} already has an active run") from None
        if interrupted:
            logger.info(
                "Cancelled %d inflight run(s) on thread %s (strategy=%s)",
                interrupted,
                thread_id,
                multitask_strategy,
            )
        logger.info("Run created: run_id=%s thread_id=%s", record.run_id, thread_id)
        return record

    async def has_inflight(self, thread_id: str) -> bool:
        """Return ``True`` if *thread_id* has a pending or running run."""
        backend = await self._ready()
        return await backend.has_inflight(thread_id)

    async def cleanup(self, run_id: str, *, delay: float = 300) -> None:
        """Remove a run record after an optional delay (an active run is cancelled first)."""
        if delay > 0:
            await asyncio.sleep(delay)
        backend = await self._ready()
        for _ in range(3):
            try:
                await backend.delete(run_id)
                break
            except _NotFound:
                break
            except _Active:
                await self.cancel(run_id)
        self._runs.pop(run_id, None)
        logger.debug("Run record %s cleaned up", run_id)
