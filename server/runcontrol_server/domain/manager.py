"""The run manager: the one entry point the servicer talks to.

It turns caller intent into drafts and changes (ids, defaults, canonical payloads)
and hands each to the store as one atomic operation. It holds no run state itself:
watchers, waiters and the janitor read this process's cache of the store's change
feed (`FeedCache`), which sees every replica's changes, and use only the store
protocol, so the same manager runs over the in-memory store and over PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .errors import RunNotFound
from .feed import DEFAULT_CATCH_UP_TIMEOUT, FeedCache
from .history import DEFAULT_MAX_CHANGES
from .ids import new_run_id
from .janitor import DEFAULT_PRUNE_INTERVAL, DEFAULT_RETENTION, Janitor
from .model import (
    CancelAction,
    CancelOutcome,
    CreateOutcome,
    DeleteOutcome,
    DisconnectMode,
    Inflight,
    ListQuery,
    MultitaskStrategy,
    Run,
    RunDraft,
    RunPage,
    RunStatus,
    StatusChange,
    TransitionOutcome,
    canonical_json,
)
from .rules import DEFAULT_CANCEL_REASON
from .store import RunStore
from .waiting import DEFAULT_MAX_WAITERS, RunWaiters
from .watch import DEFAULT_MAX_WATCHERS, DEFAULT_PROGRESS_INTERVAL, Watcher, WatchFilter, WatchHub

log = logging.getLogger(__name__)

DISCONNECT_CANCEL_REASON = "client disconnected while attached (WaitRun)"
# worker_id given to a claim that names no worker (see `RunManager.set_status`).
ANONYMOUS_CLAIMER_PREFIX = "anonymous-"


class RunManager:
    def __init__(
        self,
        store: RunStore,
        *,
        new_id: Callable[[], str] = new_run_id,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        retention: timedelta | None = DEFAULT_RETENTION,
        prune_interval: timedelta = DEFAULT_PRUNE_INTERVAL,
        history_size: int = DEFAULT_MAX_CHANGES,
        catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT,
    ) -> None:
        """`retention`: how long finished runs are kept (None: forever). The janitor
        enforcing it and every run deadline runs between `start()` and `close()`.
        `history_size` bounds this process's cache of the change feed (which also drops
        whatever the store compacts)."""
        self._store = store
        self._store_id: str | None = None
        self._new_id = new_id
        # One reader follows the store's change feed into a local, bounded cache.
        self.feed = FeedCache(
            store,
            max_changes=history_size,
            catch_up_timeout=catch_up_timeout,
        )
        # Watchers are cursors into the feed cache; the hub bounds and ends them.
        self.watch_hub = WatchHub(
            self.feed.history, max_watchers=max_watchers, progress_interval=progress_interval
        )
        # WaitRun: one shared future per waited-on run; the janitor: one task for all
        # deadlines, retention and change-feed trimming.
        self._waiters = RunWaiters(store, self.feed, max_waiters=max_waiters)
        self._janitor = Janitor(
            store, self.feed, retention=retention, prune_interval=prune_interval
        )
        # Cancels for runs whose attached waiter went away: kept so they cannot be
        # garbage-collected mid-flight and so `close` lets them finish.
        self._detach_cancels: set[asyncio.Task[None]] = set()

    @property
    def store_id(self) -> str | None:
        """The store's identity (`RunStore.identity`), known once `start` ran."""
        return self._store_id

    @property
    def store(self) -> RunStore:
        """The store (for introspection and tests; callers use the manager's methods)."""
        return self._store

    @property
    def waiters(self) -> RunWaiters:
        return self._waiters

    @property
    def janitor(self) -> Janitor:
        return self._janitor

    async def start(self) -> None:
        """Start following the change feed and the janitor (deadlines, retention), and
        return once the feed cache is primed. Idempotent."""
        await self._store.open()
        self._store_id = await self._store.identity()
        await self.feed.ready()
        self._janitor.start()

    # -- watching ----------------------------------------------------------------------

    async def watch(
        self, watch_filter: WatchFilter, *, progress_interval: float | None = None
    ) -> Watcher:
        """A registered watcher positioned "from now" (what this process has seen).

        Use it as a context manager so it is unregistered on every exit.
        Raises: LimitExceeded, ShuttingDown.
        """
        await self.feed.ready()
        return self.watch_hub.watch(watch_filter, progress_interval=progress_interval)

    async def seek(self, watcher: Watcher, revision: int) -> None:
        """Move `watcher` to start at `revision`, waiting (bounded) for the feed cache to
        reach `revision - 1` when another replica or a snapshot is ahead of it.

        Raises: InvalidArgument, RevisionCompacted, StoreUnavailable.
        """
        await self.feed.catch_up(revision - 1)  # at once for a revision < 1 ...
        watcher.seek(revision)  # ... which seek refuses

    async def snapshot(
        self, thread_id: str | None, run_ids: frozenset[str]
    ) -> tuple[tuple[Run, ...], int]:
        """The matching runs, oldest first, and the revision they are consistent with
        (see `RunStore.snapshot`): with `seek(revision + 1)`, one consistent view."""
        return await self._store.snapshot(thread_id, run_ids)

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
        run_timeout: timedelta | None = None,
        max_attempts: int = 1,
    ) -> CreateOutcome:
        """Create a PENDING run under the strategy (default REJECT). See `RunStore.create_run`.

        `run_timeout` bounds the run itself (it sets the deadline), not this call.
        """
        draft = RunDraft(
            run_id=self._new_id(),
            thread_id=thread_id,
            assistant_id=assistant_id,
            on_disconnect=on_disconnect or DisconnectMode.CANCEL,
            multitask_strategy=multitask_strategy or MultitaskStrategy.REJECT,
            metadata_json=canonical_json(metadata),
            kwargs_json=canonical_json(kwargs),
            request_id=request_id,
            timeout=run_timeout,
            max_attempts=max_attempts,
        )
        return await self._store.create_run(draft)

    async def get_run(self, run_id: str) -> Run:
        return await self._store.get_run(run_id)

    async def list_runs(self, query: ListQuery) -> RunPage:
        return await self._store.list_runs(query)

    async def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        worker_id: str | None = None,
        expected_mod_revision: int | None = None,
        lease_ttl: timedelta | None = None,
    ) -> TransitionOutcome:
        """A worker's move (see `rules.check_transition`); a claim may take a lease."""
        if status is RunStatus.RUNNING and worker_id is None:
            # Exactly one claimer wins, named or not: an anonymous claim gets an id of
            # its own (returned in the record's worker_id), so a second anonymous claim
            # is ALREADY_CLAIMED instead of a harmless-looking repeat.
            worker_id = ANONYMOUS_CLAIMER_PREFIX + self._new_id()
        change = StatusChange(run_id, status, error, worker_id, expected_mod_revision, lease_ttl)
        return await self._store.set_status(change)

    async def renew_lease(self, run_id: str, worker_id: str) -> tuple[Run, datetime]:
        """Extend the claimer's lease by its TTL from now; no revision (see `RunStore`).
        Returns the run and when the lease now lapses."""
        return await self._store.renew_lease(run_id, worker_id)

    async def cancel_run(
        self, run_id: str, *, action: CancelAction | None = None, reason: str | None = None
    ) -> CancelOutcome:
        return await self._store.cancel_run(
            run_id, action or CancelAction.INTERRUPT, reason or DEFAULT_CANCEL_REASON
        )

    async def has_inflight(self, thread_id: str) -> Inflight:
        return await self._store.inflight(thread_id)

    async def delete_run(
        self, run_id: str, *, expected_mod_revision: int | None = None
    ) -> DeleteOutcome:
        return await self._store.delete_run(run_id, expected_mod_revision)

    async def revision(self) -> int:
        return await self._store.revision()

    # The timeout is part of the answer (done=false), not an error.
    async def wait_run(
        self,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        attach: bool = False,
    ) -> tuple[Run, bool]:
        """Wait until the run is terminal or `timeout` seconds pass (None: no limit).

        Returns the run and whether it is terminal. With `attach`, a caller that goes
        away (this call is cancelled) before the end cancels the run if its
        on_disconnect is CANCEL; never when the wait ends because of shutdown.
        Raises: RunNotFound, LimitExceeded (`max_waiters`), ShuttingDown.
        """
        self.feed.start()  # waiters are woken through the feed cache
        try:
            return await self._waiters.wait(run_id, timeout)
        except asyncio.CancelledError:
            if attach and not self._waiters.shutting_down:
                # A cancelled task must not await: the cancel runs as its own task.
                task = asyncio.get_running_loop().create_task(self._cancel_detached(run_id))
                self._detach_cancels.add(task)
                task.add_done_callback(self._detach_cancels.discard)
            raise

    async def _cancel_detached(self, run_id: str) -> None:
        try:
            run = await self._store.get_run(run_id)
            if run.is_active and run.on_disconnect is DisconnectMode.CANCEL:
                # Atomic: a run that finished meanwhile is left as it is.
                await self._store.cancel_run(
                    run_id, CancelAction.INTERRUPT, DISCONNECT_CANCEL_REASON
                )
        except RunNotFound:
            pass
        except Exception:
            log.exception("cancelling run %s after its attached waiter left failed", run_id)

    async def wait_detach_cancels(self) -> None:
        """Wait until the cancels triggered by departed attached waiters have run."""
        if self._detach_cancels:
            await asyncio.gather(*self._detach_cancels, return_exceptions=True)

    async def begin_shutdown(self) -> None:
        """End every open watch and wait with ShuttingDown. Idempotent.

        Each watch reports the last revision it delivered, so its client resumes
        exactly; waits report the store revision. Attached runs are not cancelled.
        """
        self.watch_hub.shutdown()
        if not self._waiters.shutting_down:
            # What this process has seen: answering must not depend on the store.
            self._waiters.shutdown(self.feed.history.head_revision)

    async def close(self) -> None:
        """End pending watches and waits, stop the janitor, close the store. Idempotent."""
        await self.begin_shutdown()
        await self._janitor.stop()
        await self.wait_detach_cancels()
        await self.feed.stop()
        await self._store.close()
