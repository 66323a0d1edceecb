"""Divergences the model-based test found, kept as tests of their own.

PostgreSQL, retention racing CreateRun (found by `race_retention_and_create` under the
thorough profile, as a psycopg ForeignKeyViolation out of `purge_finished`):
`PostgresRunStore.purge_finished` commits its deletions, then `_forget_empty_threads`
deletes the `rc_threads` rows of threads left without runs, in one statement
(`... NOT EXISTS (SELECT 1 FROM rc_runs ...) FOR UPDATE SKIP LOCKED`). When a CreateRun
on such a thread commits while that statement runs (after its snapshot, before it
locks the thread row), READ COMMITTED rechecks the locked row but not the NOT EXISTS
subquery, which still sees no run: the row is deleted and the foreign key from the new
run raised ForeignKeyViolation. The purge had committed by then, so nothing was lost,
but `purge_finished` raised instead of returning the deleted runs, and the janitor
logged the round as failed (a traceback) and backed off. Fixed: the empty threads are
now locked first and deleted in a second statement, whose fresh snapshot sees every
run committed before the lock. The race window was one statement wide: racing 16
threads at once hit it in about a third of the rounds, so 60 rounds would miss a
regression with a probability around 1e-10.
"""

from __future__ import annotations

import asyncio

import pytest

from runcontrol_server.domain import MultitaskStrategy, RunManager
from runcontrol_server.stores.postgres import PostgresRunStore

THREADS = 16
ROUNDS = 60


@pytest.mark.timeout(120)
async def test_retention_racing_creates_on_the_threads_it_empties(pg_url: str) -> None:
    store = PostgresRunStore(pg_url, pool_size=THREADS + 4)
    manager = RunManager(store)
    await store.open()
    try:
        for round_number in range(ROUNDS):
            threads = [f"round-{round_number}-thread-{i}" for i in range(THREADS)]
            for thread in threads:  # one finished run per thread: retention empties it
                run = (await manager.create_run(thread)).run
                await manager.cancel_run(run.run_id)
            now = await store.now()
            purge = asyncio.ensure_future(store.purge_finished(now, 10_000))
            creates = [
                asyncio.ensure_future(
                    manager.create_run(thread, multitask_strategy=MultitaskStrategy.ENQUEUE)
                )
                for thread in threads
            ]
            await asyncio.gather(purge, *creates)
            assert len(purge.result()) == THREADS
            for thread, create in zip(threads, creates, strict=True):
                inflight = await manager.has_inflight(thread)
                assert inflight.run_ids == (create.result().run.run_id,)
    finally:
        await store.close()
