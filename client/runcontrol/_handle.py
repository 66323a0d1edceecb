"""Run handles: one object for one run (like Temporal's WorkflowHandle).

A handle remembers the last record it saw (`run`) and updates it on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from ._models import CancelAction, EventType, Run, RunStatus
from ._requests import Creation
from ._watch import Resynced, WatchEvent, WatchItem
from .errors import InvalidTransition, RunControlError

log = logging.getLogger(__name__)

#: The `error` a claimed run records when the worker's own task is cancelled.
WORKER_CANCELLED = "worker cancelled"

if TYPE_CHECKING:
    from ._client import AsyncClient, Client


class AsyncRunHandle:
    def __init__(self, client: AsyncClient, run: Run, creation: Creation | None = None) -> None:
        self._client = client
        self.run = run
        #: What CreateRun decided (interrupted runs, queue position, replay); None for get_run.
        self.creation = creation

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def __repr__(self) -> str:
        return f"AsyncRunHandle(run_id={self.run_id!r}, status={self.run.status.name})"

    async def refresh(self) -> Run:
        self.run = await self._client.fetch_run(self.run_id)
        return self.run

    async def wait(self, timeout: float | timedelta | None = None, *, attach: bool = False) -> bool:
        """Wait until the run is terminal (True) or `timeout` passes (False); updates `run`.

        With `attach`, the server cancels a run whose on_disconnect is CANCEL when this
        call goes away first (the awaiting task is cancelled, the process exits).
        """
        self.run, done = await self._client.wait_run(self.run_id, timeout=timeout, attach=attach)
        return done

    async def cancel(self, action: CancelAction | None = None, reason: str | None = None) -> bool:
        """Cancel the run; True when this call cancelled it (False: it had finished)."""
        self.run, cancelled = await self._client.cancel_run(
            self.run_id, action=action, reason=reason
        )
        return cancelled

    async def set_status(
        self,
        status: RunStatus,
        *,
        error: str | None = None,
        worker_id: str | None = None,
        expected_mod_revision: int | None = None,
    ) -> bool:
        """Worker-side transition; True when it changed the run (False: a repeat)."""
        self.run, changed = await self._client.set_status(
            self.run_id,
            status,
            error=error,
            worker_id=worker_id,
            expected_mod_revision=expected_mod_revision,
        )
        return changed

    async def claim(self, worker_id: str) -> bool:
        """PENDING -> RUNNING for `worker_id`; raises AlreadyClaimed if another won."""
        return await self.set_status(RunStatus.RUNNING, worker_id=worker_id)

    async def delete(self) -> None:
        await self._client.delete_run(self.run_id)

    def claimed(self, worker_id: str) -> AbstractAsyncContextManager[ClaimedRun]:
        """Claim the run for `worker_id`, hear about its cancellation, and finish it.

        ``async with handle.claimed("w1") as job:`` — what an in-process registry's
        abort event gave a worker, across processes:

        * **Enter** claims the run (PENDING -> RUNNING; `AlreadyClaimed`,
          `InvalidTransition`, ... propagate and nothing else happens) and starts one
          background task that watches this run from the claim's revision + 1 (a
          resuming watch: reconnects and compaction lose nothing).
        * **While the body runs**, `job.cancelled` is set as soon as the run reaches
          any terminal status — the worker itself writes none before exit, so every
          one came from someone else: INTERRUPTED (a cancel, or a newer run's
          INTERRUPT/ROLLBACK; `job.cancel_action` / `job.cancel_reason` from the
          record), TIMEOUT (reason "run timed out"), or ERROR/SUCCESS written by
          another caller (reason: its `error`, if any). A deleted run counts too.
        * **Exit**: if the run was cancelled, nothing is written. Otherwise a body
          that returned records SUCCESS; a body that raised records ERROR with
          ``"<ExceptionType>: <message>"`` and the exception is re-raised; the
          worker's own `asyncio.CancelledError` records ERROR "worker cancelled" and
          is re-raised. A cancel that lands between the last watch event and this
          write makes the write fail with INVALID_TRANSITION: that race is swallowed
          (the run is re-read into `job.run` and `job.cancelled` is set), never
          raised. Any other failure of the final write is raised on the success
          path; after a body that raised it is logged and the body's exception wins.
          The watch task is always cancelled and awaited first.

        `job.run` (and `handle.run`) follow the latest record seen. The body must leave
        the final write to the block: a SUCCESS/ERROR it wrote itself would read as
        "finished by someone else".
        """
        return self._claimed(worker_id)

    @asynccontextmanager
    async def _claimed(self, worker_id: str) -> AsyncIterator[ClaimedRun]:
        await self.claim(worker_id)
        job = ClaimedRun(self, worker_id)
        watcher = asyncio.get_running_loop().create_task(
            job._watch(self.run.mod_revision + 1), name=f"runcontrol-claim-{self.run_id}"
        )
        failure: BaseException | None = None
        try:
            yield job
        except BaseException as raised:
            failure = raised
            raise
        finally:
            watcher.cancel()
            # asyncio.wait, not `await watcher`: a cancel of this task must not be eaten.
            await asyncio.wait([watcher])
            await job._finish(failure)

    def watch(
        self,
        *,
        start_revision: int = 0,
        send_initial: bool = False,
        bookmarks: bool = False,
        max_reconnects: int | None = None,
    ) -> AsyncIterator[WatchItem]:
        """Changes of this run only (a resuming watch, see `AsyncClient.watch`)."""
        return self._client.watch(
            run_ids=[self.run_id],
            start_revision=start_revision,
            send_initial=send_initial,
            bookmarks=bookmarks,
            max_reconnects=max_reconnects,
        )


class RunHandle:
    """Blocking twin of `AsyncRunHandle` (no watch: use `AsyncClient.watch`)."""

    def __init__(self, client: Client, run: Run, creation: Creation | None = None) -> None:
        self._client = client
        self.run = run
        self.creation = creation

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, status={self.run.status.name})"

    def refresh(self) -> Run:
        self.run = self._client.fetch_run(self.run_id)
        return self.run

    def wait(self, timeout: float | timedelta | None = None, *, attach: bool = False) -> bool:
        self.run, done = self._client.wait_run(self.run_id, timeout=timeout, attach=attach)
        return done

    def cancel(self, action: CancelAction | None = None, reason: str | None = None) -> bool:
        self.run, cancelled = self._client.cancel_run(self.run_id, action=action, reason=reason)
        return cancelled

    def set_status(
        self,
        status: RunStatus,
        *,
        error: str | None = None,
        worker_id: str | None = None,
        expected_mod_revision: int | None = None,
    ) -> bool:
        self.run, changed = self._client.set_status(
            self.run_id,
            status,
            error=error,
            worker_id=worker_id,
            expected_mod_revision=expected_mod_revision,
        )
        return changed

    def claim(self, worker_id: str) -> bool:
        return self.set_status(RunStatus.RUNNING, worker_id=worker_id)

    def delete(self) -> None:
        self._client.delete_run(self.run_id)


class ClaimedRun:
    """A run claimed by `AsyncRunHandle.claimed`: the worker's view of cancellation."""

    def __init__(self, handle: AsyncRunHandle, worker_id: str) -> None:
        self.handle = handle
        self.worker_id = worker_id
        #: Set once the run was cancelled, interrupted, timed out or finished by others.
        self.cancelled = asyncio.Event()
        #: INTERRUPT or ROLLBACK once an INTERRUPTED run set `cancelled`; else None.
        self.cancel_action: CancelAction | None = None
        #: Why: the record's cancel_reason, "run timed out", another writer's error.
        self.cancel_reason: str | None = None

    @property
    def run(self) -> Run:
        """The latest record seen (the claim, a watch event, or the final write)."""
        return self.handle.run

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    def __repr__(self) -> str:
        return (
            f"ClaimedRun(run_id={self.run_id!r}, worker_id={self.worker_id!r}, "
            f"cancelled={self.cancelled.is_set()})"
        )

    async def wait_cancelled(self) -> None:
        """Return once the run has been cancelled (see `cancelled`)."""
        await self.cancelled.wait()

    def _observe(self, run: Run | None) -> None:
        """Record `run` (None: deleted) and set `cancelled` if it ended without us."""
        if self.cancelled.is_set():
            return
        if run is None:
            self.cancel_reason = "run deleted"
            self.cancelled.set()
            return
        if run.mod_revision >= self.handle.run.mod_revision:
            self.handle.run = run
        if run.is_active:
            return
        if run.status is RunStatus.INTERRUPTED:
            self.cancel_action, self.cancel_reason = run.cancel_action, run.cancel_reason
        elif run.status is RunStatus.TIMEOUT:
            self.cancel_reason = "run timed out"
        else:
            self.cancel_reason = run.error
        self.cancelled.set()

    async def _watch(self, start_revision: int) -> None:
        try:
            async for item in self.handle.watch(start_revision=start_revision):
                if isinstance(item, WatchEvent):
                    deleted = item.type is EventType.DELETED
                    self._observe(None if deleted else item.run)
                elif isinstance(item, Resynced):
                    found = [run for run in item.runs if run.run_id == self.run_id]
                    self._observe(found[0] if found else None)
                if self.cancelled.is_set():
                    return
        except RunControlError:
            # The exit write still detects a cancel (INVALID_TRANSITION) on its own.
            log.warning("watching claimed run %s failed", self.run_id, exc_info=True)

    async def _finish(self, failure: BaseException | None) -> None:
        if self.cancelled.is_set():
            return
        error: str | None = None
        status = RunStatus.SUCCESS
        if isinstance(failure, asyncio.CancelledError):
            status, error = RunStatus.ERROR, WORKER_CANCELLED
        elif failure is not None:
            status, error = RunStatus.ERROR, f"{type(failure).__name__}: {failure}"
        try:
            await self.handle.set_status(status, error=error, worker_id=self.worker_id)
        except InvalidTransition as late:
            # RUNNING -> SUCCESS/ERROR is always legal: the run ended (a cancel or its
            # deadline) after the last event the watch delivered. Not the worker's error.
            try:
                self._observe(await self.handle.refresh())
            except RunControlError:
                self._observe(None)
            if not self.cancelled.is_set():  # cannot happen with a conforming server
                self.cancel_reason = f"run is {late.from_status}"
                self.cancelled.set()
        except RunControlError:
            if failure is None:
                raise
            log.warning(
                "recording %s for claimed run %s failed",
                status.name,
                self.run_id,
                exc_info=True,
            )
