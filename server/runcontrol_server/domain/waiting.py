"""Waiting for runs to finish: one shared future per waited-on run, no polling.

Every waiter of a run shares ONE future, resolved by ONE listener on this process's
feed cache (which sees every replica's changes) when a change makes the run terminal
(or deletes it): a finish costs one wake-up per run however many callers wait on it,
and a run nobody waits on costs a dict lookup. A future is dropped as soon as it is
resolved or its last waiter leaves (by timeout, cancellation or error), so abandoned
waits leave nothing behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .errors import LimitExceeded, ShuttingDown
from .feed import FeedCache
from .model import ChangeKind, ChangeSet, Run
from .store import RunStore


@dataclass(slots=True)
class _Slot:
    # Resolved with the run's terminal (or last) record, or None on shutdown.
    future: asyncio.Future[Run | None]
    waiters: int = field(default=0)


# Callers inside `wait` at once, per process: each holds a task and a call.
DEFAULT_MAX_WAITERS = 10_000


class RunWaiters:
    """Registry `run_id -> shared future` of the runs someone is waiting for."""

    def __init__(
        self, store: RunStore, feed: FeedCache, *, max_waiters: int = DEFAULT_MAX_WAITERS
    ) -> None:
        if max_waiters < 1:
            raise ValueError("max_waiters must be at least 1")
        self.max_waiters = max_waiters
        self._store = store
        self._slots: dict[str, _Slot] = {}
        self._waiter_count = 0
        self._shutdown_revision: int | None = None
        # Every change committed by any process reaches this one through its feed cache.
        feed.history.add_listener(self._on_change)
        feed.on_resync(self.resync)

    @property
    def count(self) -> int:
        """Runs with at least one waiter (registered futures)."""
        return len(self._slots)

    @property
    def waiter_count(self) -> int:
        """Callers currently inside `wait` (past registration)."""
        return self._waiter_count

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_revision is not None

    # The timeout is part of the answer (done=false), not an error: asyncio.timeout does not fit.
    async def wait(self, run_id: str, timeout: float | None) -> tuple[Run, bool]:  # noqa: ASYNC109
        """Wait until `run_id` is terminal or `timeout` seconds pass (None: no limit).

        Returns the run and whether it is terminal. Raises RunNotFound, LimitExceeded
        (`max_waiters` callers are waiting already), or ShuttingDown once `shutdown`
        was called.
        """
        self._check_open()
        if self._waiter_count >= self.max_waiters:
            raise LimitExceeded(
                "max_waiters", f"at most {self.max_waiters} WaitRun calls may wait at once"
            )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # Register before reading: a finish between the read and the registration
            # would otherwise resolve nobody and this wait would sleep to its timeout.
            slot = self._join(run_id)
            try:
                run = await self._store.get_run(run_id)
                if run.status.is_terminal:
                    return run, True
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return run, False
                # asyncio.wait never cancels the shared future, whatever happens to us.
                await asyncio.wait({slot.future}, timeout=remaining)
                if not slot.future.done():  # our own time is up
                    self._check_open()
                    run = await self._store.get_run(run_id)
                    return run, run.status.is_terminal
                if (final := slot.future.result()) is not None:
                    # Terminal statuses are final, so this record is the answer even if
                    # retention has already deleted the run again.
                    return final, True
                # Resolved without a record: shutdown, or the feed cache restarted past
                # changes it never saw (`resync`): look at the store again.
                self._check_open()
            finally:
                self._leave(run_id, slot)

    def resync(self) -> None:
        """Make every pending wait read its run again (the feed skipped changes)."""
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            if not slot.future.done():
                slot.future.set_result(None)

    def shutdown(self, revision: int) -> None:
        """Make every pending and future `wait` raise `ShuttingDown(revision)` promptly."""
        if self._shutdown_revision is not None:
            return
        self._shutdown_revision = revision
        self.resync()

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._shutdown_revision is not None:
            raise ShuttingDown(self._shutdown_revision)

    def _join(self, run_id: str) -> _Slot:
        slot = self._slots.get(run_id)
        if slot is None:
            slot = _Slot(asyncio.get_running_loop().create_future())
            self._slots[run_id] = slot
        slot.waiters += 1
        self._waiter_count += 1
        return slot

    def _leave(self, run_id: str, slot: _Slot) -> None:
        slot.waiters -= 1
        self._waiter_count -= 1
        # The slot may already be gone (resolved) or replaced by a newer one.
        if slot.waiters == 0 and self._slots.get(run_id) is slot:
            del self._slots[run_id]

    def _on_change(self, change_set: ChangeSet) -> None:
        # Runs inside the writer's atomic step: quick, never raises.
        if not self._slots:
            return
        for change in change_set.changes:
            if change.kind is ChangeKind.DELETED or change.run.status.is_terminal:
                slot = self._slots.pop(change.run.run_id, None)
                if slot is not None and not slot.future.done():
                    slot.future.set_result(change.run)
