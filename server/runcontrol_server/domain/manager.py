"""The run manager: the one entry point the servicer talks to.

It turns caller intent into drafts and changes (ids, defaults, canonical payloads)
and hands each to the store as one atomic operation. It holds no run state itself,
so swapping the in-memory store for PostgreSQL changes nothing above this line.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

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


def _new_run_id() -> str:
    return str(uuid.uuid4())


class RunManager:
    def __init__(self, store: RunStore, *, new_id: Callable[[], str] = _new_run_id) -> None:
        self._store = store
        self._new_id = new_id

    @property
    def store(self) -> RunStore:
        return self._store

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
    ) -> TransitionOutcome:
        change = StatusChange(run_id, status, error, worker_id, expected_mod_revision)
        return await self._store.set_status(change)

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

    async def close(self) -> None:
        await self._store.close()
