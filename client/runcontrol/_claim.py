"""A worker's claim on a run: `AsyncRunHandle.claimed` and the `ClaimedRun` it yields.

What the original in-process registry's abort event gave a worker, across processes:
one background task watches the run and sets `cancelled` when anyone else ends it,
another renews the claim's lease (when it has one), and leaving the block records the
worker's outcome unless the run was cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from ._models import CancelAction, EventType, Run, RunStatus
from ._watch import Resynced, WatchEvent
from .errors import InvalidTransition, LeaseNotHeld, RunControlError, RunNotFound

if TYPE_CHECKING:
    from ._handle import AsyncRunHandle

log = logging.getLogger(__name__)

#: The `error` a claimed run records when the worker's own task is cancelled.
WORKER_CANCELLED = "worker cancelled"


@asynccontextmanager
async def claimed(
    handle: AsyncRunHandle, worker_id: str, lease_ttl: float | timedelta | None
) -> AsyncIterator[ClaimedRun]:
    """`AsyncRunHandle.claimed` (its docstring says what it does)."""
    await handle.claim(worker_id, lease_ttl=lease_ttl)
    job = ClaimedRun(handle, worker_id)
    loop = asyncio.get_running_loop()
    helpers = [
        loop.create_task(
            job._watch(handle.run.mod_revision + 1), name=f"runcontrol-claim-{handle.run_id}"
        )
    ]
    if lease_ttl is not None:
        ttl = lease_ttl.total_seconds() if isinstance(lease_ttl, timedelta) else lease_ttl
        helpers.append(loop.create_task(job._renew(ttl), name=f"runcontrol-lease-{handle.run_id}"))
    failure: BaseException | None = None
    try:
        yield job
    except BaseException as raised:
        failure = raised
        raise
    finally:
        for helper in helpers:
            helper.cancel()
        # asyncio.wait, not `await`: a cancel of this task must not be eaten.
        await asyncio.wait(helpers)
        await job._finish(failure)


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
            if run.status is RunStatus.RUNNING and run.worker_id == self.worker_id:
                return
            # The lease lapsed: the run went back to PENDING (maybe claimed again).
            self.cancel_reason = "lease lost: the run was taken back from this worker"
            self.cancelled.set()
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

    async def _renew(self, ttl: float) -> None:
        """Renew the lease every third of its TTL until the run is not ours any more.

        A failed renewal (server unreachable) is retried sooner; only the server's
        refusal (`LeaseNotHeld`) ends the loop, with `cancelled` set.
        """
        client, period = self.handle._client, ttl / 3
        delay = period
        while not self.cancelled.is_set():
            await asyncio.sleep(delay)
            try:
                run, _ = await client.renew_lease(self.run_id, self.worker_id, timeout=period)
            except LeaseNotHeld:
                try:
                    self._observe(await self.handle.refresh())
                except RunNotFound:
                    self._observe(None)
                if not self.cancelled.is_set():
                    self.cancel_reason = "lease lost"
                    self.cancelled.set()
                return
            except RunControlError:
                log.warning("renewing the lease of run %s failed", self.run_id, exc_info=True)
                delay = period / 3
                continue
            self._observe(run)
            delay = period

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
