"""Run handles: one object for one run (like Temporal's WorkflowHandle).

A handle remembers the last record it saw (`run`) and updates it on every call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

from ._models import CancelAction, Run, RunStatus
from ._requests import Creation
from ._watch import WatchItem

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
