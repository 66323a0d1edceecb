"""Run handles: one object for one run (like Temporal's WorkflowHandle).

A handle remembers the last record it saw (`run`) and updates it on every call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._claim import ClaimedRun, claimed
from ._models import CancelAction, Run, RunStatus
from ._requests import Creation
from ._watch import WatchItem

if TYPE_CHECKING:
    from ._client import AsyncClient, Client


class _HandleBase:
    """What both handles share: the client, the last record seen, the creation."""

    def __init__(self, client: Any, run: Run, creation: Creation | None = None) -> None:
        self._client = client
        #: The last record this handle saw; every call updates it.
        self.run = run
        #: What CreateRun decided (interrupted runs, queue position, replay); None for get_run.
        self.creation = creation

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(run_id={self.run_id!r}, status={self.run.status.name})"


class AsyncRunHandle(_HandleBase):
    """One run of an `AsyncClient` (like Temporal's WorkflowHandle)."""

    _client: AsyncClient

    async def refresh(self) -> Run:
        """Read the run again."""
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

    async def claim(self, worker_id: str, *, lease_ttl: float | timedelta | None = None) -> bool:
        """PENDING -> RUNNING for `worker_id`; raises AlreadyClaimed if another won.

        With `lease_ttl` the claim holds a lease that must be renewed
        (`AsyncClient.renew_lease`; `claimed` does it) or the run is taken back.
        """
        self.run, changed = await self._client.set_status(
            self.run_id, RunStatus.RUNNING, worker_id=worker_id, lease_ttl=lease_ttl
        )
        return changed

    async def delete(self) -> None:
        """Remove the finished run."""
        await self._client.delete_run(self.run_id)

    def claimed(
        self, worker_id: str, *, lease_ttl: float | timedelta | None = None
    ) -> AbstractAsyncContextManager[ClaimedRun]:
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

        * **Lease** (`lease_ttl`, seconds or a timedelta): the claim holds a lease and a
          second background task renews it every third of its TTL, so the run is
          taken back from this worker only if the process dies or loses the server
          for a whole TTL. If the server refuses a renewal (`LeaseNotHeld`: the lease
          lapsed and the run went back to PENDING or ended ERROR "worker lost"),
          `job.cancelled` is set with that reason and nothing is written on exit.

        `job.run` (and `handle.run`) follow the latest record seen. The body must leave
        the final write to the block: a SUCCESS/ERROR it wrote itself would read as
        "finished by someone else".
        """
        return claimed(self, worker_id, lease_ttl)

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


class RunHandle(_HandleBase):
    """One run of a blocking `Client`: `AsyncRunHandle`'s methods without `await`."""

    _client: Client

    def refresh(self) -> Run:
        """Read the run again."""
        self.run = self._client.fetch_run(self.run_id)
        return self.run

    def wait(self, timeout: float | timedelta | None = None, *, attach: bool = False) -> bool:
        """Wait until the run is terminal (True) or `timeout` passes (False)."""
        self.run, done = self._client.wait_run(self.run_id, timeout=timeout, attach=attach)
        return done

    def cancel(self, action: CancelAction | None = None, reason: str | None = None) -> bool:
        """Cancel the run; True when this call cancelled it (False: it had finished)."""
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
        """Worker-side transition; True when it changed the run (False: a repeat)."""
        self.run, changed = self._client.set_status(
            self.run_id,
            status,
            error=error,
            worker_id=worker_id,
            expected_mod_revision=expected_mod_revision,
        )
        return changed

    def claim(self, worker_id: str, *, lease_ttl: float | timedelta | None = None) -> bool:
        """PENDING -> RUNNING for `worker_id` (see `AsyncRunHandle.claim`)."""
        self.run, changed = self._client.set_status(
            self.run_id, RunStatus.RUNNING, worker_id=worker_id, lease_ttl=lease_ttl
        )
        return changed

    def delete(self) -> None:
        """Remove the finished run."""
        self._client.delete_run(self.run_id)

    def watch(
        self,
        *,
        start_revision: int = 0,
        send_initial: bool = False,
        bookmarks: bool = False,
        max_reconnects: int | None = None,
    ) -> Iterator[WatchItem]:
        """Changes of this run only, blocking (see `Client.watch`)."""
        return self._client.watch(
            run_ids=[self.run_id],
            start_revision=start_revision,
            send_initial=send_initial,
            bookmarks=bookmarks,
            max_reconnects=max_reconnects,
        )
